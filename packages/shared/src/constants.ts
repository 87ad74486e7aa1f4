/**
 * Timeouts and limits, in one place. Each can be overridden where it is used
 * (session options, server and agent config); these are the defaults.
 */
export const Defaults = {
  /** Per-stream receive window: the most bytes a peer may send unacknowledged. */
  initialWindow: 256 * 1024,
  /** A stream whose reader keeps up grows its window up to this (see MuxStream.grant). */
  maxWindow: 1024 * 1024,
  /** Largest DATA payload. Measured choice: see docs/benchmarks.md. */
  maxFrameSize: 32 * 1024,
  /** Most bytes put into one WebSocket message (several frames). */
  maxMessageSize: 256 * 1024,
  /** Stop framing DATA while this many bytes are handed to the transport but not yet written. */
  transportHighWater: 256 * 1024,
  /** How long an OPEN may wait for OPEN_OK / OPEN_ERR. */
  openTimeoutMs: 10_000,
  /** How often each side sends PING on an idle session. */
  pingIntervalMs: 10_000,
  /** A session whose PING has no PONG for this long is dead. */
  pingTimeoutMs: 20_000,
  /** Streams one session may carry at once. */
  maxStreamsPerSession: 20_000,
  /** Grace period for draining on SIGTERM. */
  gracePeriodMs: 30_000,
  /** Largest HTTP header block accepted by the frontends. */
  maxHeaderSize: 16 * 1024,
  /**
   * L7 clients that drop the /clusters/<name> path prefix (kubectl get --raw
   * does) name the cluster in the TLS server name: <cluster>.<this suffix>,
   * unless the server has a --cluster-domain.
   */
  l7ServerNameSuffix: 'clusters.kubetunnel',
  /**
   * How often an agent looks dns:/// servers up again (it also does when a
   * tunnel is lost). A replica added to a headless Service is reached within
   * this; one removed drains its own tunnels.
   */
  dnsRefreshMs: 30_000,
  /** WebSocket payload limit on the tunnel. */
  maxWsPayload: 1024 * 1024,
} as const;
