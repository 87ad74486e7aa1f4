import type { ListenerLimits, SessionOptions } from '@kubetunnel/shared';

/** The agent's validated configuration (the CLI builds it from flags, file and env). */
export interface AgentConfig {
  /** wss:// URLs of the server's agent gateway (each may be a load balancer), or dns:///NAME:PORT (a headless Service). */
  servers: string[];
  /** Resolvers for dns:/// servers (host or host:port); empty: the system's. */
  dnsServers?: string[];
  /** How often dns:/// servers are looked up again (default Defaults.dnsRefreshMs). */
  dnsRefreshMs?: number;
  cluster: string;
  agentId: string;
  /** PEM contents. */
  cert: string;
  key: string;
  ca: string;
  /** The member apiserver. */
  apiserver: URL;
  /** The member apiserver's CA (PEM), reported at registration and used for L7. */
  apiserverCA?: string;
  /** The agent's own token toward the apiserver, for L7 (re-read as it rotates). */
  apiserverTokenFile?: string;
  /** host:port targets the agent may dial besides its apiserver. */
  allowDest: string[];
  healthPort: number;
  healthHost: string;
  gracePeriodMs: number;
  backoff: { initialMs: number; maxMs: number };
  dialTimeoutMs: number;
  session?: Omit<SessionOptions, 'role'>;
  /** Connection limits of the health port (default: defaultLimits('plain')). */
  healthLimits?: ListenerLimits;
}
