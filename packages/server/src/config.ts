import type { Identity, ListenerLimits, SessionOptions } from '@kubetunnel/shared';
import type { MemberCredential } from './grpc/anp-l7.js';
import type { PolicyRule } from './policy.js';

/** The server's validated configuration (the CLI builds it from flags, file and env). */
export interface ServerConfig {
  /** PEM contents: the server's certificate (signed by the hub CA) and key. */
  cert: string;
  key: string;
  /**
   * PEM of the client CA (`--client-ca`, older name `--ca`): it verifies
   * agent and client certificates, and nothing else.
   */
  ca: string;
  bindAddress: string;
  proxyPort: number;
  agentPort: number;
  healthPort: number;
  adminPort: number;
  /** Address the admin port binds (default loopback: it is unauthenticated). */
  adminBindAddress: string;
  /** `<cluster>.<clusterDomain>` CONNECT hosts name a cluster. */
  clusterDomain?: string;
  /** Static tokens: token -> identity. */
  tokens: Map<string, { user: string; uid: string; groups: string[] }>;
  serverId: string;
  serverCount: number;
  gracePeriodMs: number;
  /**
   * After start, how long /readyz answers 503 and an unknown cluster is
   * answered 503 with Retry-After rather than 404, while agents reconnect
   * (default 0).
   */
  registrationGraceMs?: number;
  /** On SIGTERM, how long /readyz answers 503 while the server still accepts connections (default 0). */
  shutdownDelayMs?: number;
  /** How long a dial (CONNECT, L7, gRPC) may wait for the agent to reach its target; a gRPC Proxy call sends its DIAL_REQ within it too. */
  dialTimeoutMs: number;
  maxHeaderSize: number;
  /** Streams one client identity may hold open at once. */
  maxStreamsPerClient: number;
  session?: Omit<SessionOptions, 'role'>;
  /** Who may reach which clusters; undefined: every authenticated identity, every cluster. */
  policy?: PolicyRule[];
  /** Konnectivity ProxyService on this TLS port (0: any free port); undefined: off. */
  grpcPort?: number;
  /** Konnectivity ProxyService on this Unix socket (mode 0600); undefined: off. */
  grpcUds?: string;
  /** Who a caller on the Unix socket is (default user "kube-apiserver", no groups). */
  grpcUdsIdentity?: Identity;
  /** Konnectivity AgentService (ANP proxy-agents) on this TLS port; undefined: off. */
  anpAgentPort?: number;
  /** L7 through ANP agents: per cluster, the apiserver and a credential the hub impersonates callers with (--member-kubeconfig). */
  memberKubeconfigs?: ReadonlyMap<string, MemberCredential>;
  /** PEM of the client CA key (--client-ca-key): the server accepts join tokens and signs agent certificates. */
  clientCaKey?: string;
  /** File of revoked join token ids (--join-revocations), reloaded when it changes. */
  joinRevocationsFile?: string;
  /** Lifetime of the agent certificates this server signs (--agent-cert-ttl; default 30 days). */
  agentCertTtlMs?: number;
  /**
   * Agent connections admitted to register at once, from TCP accept to the
   * answer to their upgrade; past it they are answered 503 with Retry-After
   * (see handshake-limit.ts). Default: defaultMaxConcurrentHandshakes().
   */
  maxConcurrentHandshakes?: number;
  /**
   * Bind the health and admin ports (default true). A worker of
   * `kubetunnel server --workers N` leaves them to its primary, which answers
   * for every worker.
   */
  controlPorts?: boolean;
  /** Connection limits per listener; a listener left out gets defaultLimits of its kind. */
  limits?: Partial<Record<ListenerName, ListenerLimits>>;
}

/** The server's listeners that have connection limits, as named in logs and metrics (grpc: ProxyService over TLS; anp-agent: AgentService). */
export type ListenerName = 'proxy' | 'agent' | 'health' | 'admin' | 'grpc' | 'anp-agent';
