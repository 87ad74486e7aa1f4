/**
 * Registration happens in the WebSocket upgrade on the agent gateway: the
 * agent names its cluster and itself in request headers, the server checks
 * the claim against the agent's certificate and answers with its identity in
 * the 101 response. A refusal is an HTTP error before the upgrade.
 */
export const AGENT_PATH = '/connect';

export const RegistrationHeaders = {
  /** Request: the cluster the agent serves (must match its certificate). */
  cluster: 'x-kubetunnel-cluster',
  /** Request: the agent's id, unique within its cluster. */
  agentId: 'x-kubetunnel-agent-id',
  /** Request: comma-separated host:port targets the agent allows besides its apiserver. */
  allowDest: 'x-kubetunnel-allow-dest',
  /** Request: the member apiserver's CA bundle, base64 of the PEM (optional). */
  apiserverCA: 'x-kubetunnel-apiserver-ca',
  /** Request: whether the agent serves L7 (http) streams: "1" or absent. */
  l7: 'x-kubetunnel-l7',
  /**
   * Request: comma-separated ids of the server replicas this agent already
   * holds a tunnel to. Behind a balancer an agent lands on those too; the
   * server answers 409 instead of registering (and so replacing) it again.
   */
  heldServers: 'x-kubetunnel-held-servers',
  /** Response: the server replica's id. */
  serverId: 'x-kubetunnel-server-id',
  /** Response: how many server replicas there are. */
  serverCount: 'x-kubetunnel-server-count',
  /**
   * Response: the server's PING interval in milliseconds (its
   * --ping-interval). The agent, which PINGs only after an interval in which
   * it heard nothing, takes the same interval unless it was given its own.
   */
  pingInterval: 'x-kubetunnel-ping-interval',
} as const;

/** The PING intervals a server may be given and an agent takes from it: 1 s to 10 min. */
export const PING_INTERVAL_RANGE = { minMs: 1000, maxMs: 600_000 } as const;

/** A server's advertised PING interval, or undefined if absent or out of range. */
export function advertisedPingInterval(value: string | string[] | undefined): number | undefined {
  const ms = typeof value === 'string' && /^[0-9]{1,9}$/.test(value) ? Number(value) : NaN;
  return ms >= PING_INTERVAL_RANGE.minMs && ms <= PING_INTERVAL_RANGE.maxMs ? ms : undefined;
}

/** Agent ids: printable, short, no separators that could confuse logs. */
export function isValidAgentId(id: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(id);
}
