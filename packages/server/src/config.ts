import type { ListenerLimits, SessionOptions } from '@kubetunnel/shared';
import type { PolicyRule } from './policy.js';

/** The server's validated configuration (the CLI builds it from flags, file and env). */
export interface ServerConfig {
  /** PEM contents. */
  cert: string;
  key: string;
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
  /** How long a CONNECT may wait for the agent to reach its target. */
  dialTimeoutMs: number;
  maxHeaderSize: number;
  /** Streams one client identity may hold open at once. */
  maxStreamsPerClient: number;
  session?: Omit<SessionOptions, 'role'>;
  /** Who may reach which clusters; undefined: every authenticated identity, every cluster. */
  policy?: PolicyRule[];
  /** Connection limits per listener; a listener left out gets defaultLimits of its kind. */
  limits?: Partial<Record<ListenerName, ListenerLimits>>;
}

/** The server's listeners, as named in logs and metrics. */
export type ListenerName = 'proxy' | 'agent' | 'health' | 'admin';
