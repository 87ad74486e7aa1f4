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
  /** OPENs from the peer not yet accepted or refused (dials in progress); more are refused at once. */
  maxPendingIncoming: 4096,
  /**
   * Control frames (OPEN, OPEN_ERR, WINDOW, RESET, PONG, ...) queued for the
   * peer and not yet handed to the transport. They pile up only while the peer
   * does not read; past either bound the session closes (CONTROL_QUEUE_FULL).
   * Measured: a peer that floods OPENs without reading grew the server's RSS
   * by 65-82 MiB at 41,000 queued OPEN_ERRs (decoding garbage included) and
   * by 13-16 MiB at 10,000 (test/hostile-agent.test.ts). 10,000 is also the
   * bound Go's HTTP/2 server puts on queued control frames.
   */
  maxControlFrames: 10_000,
  maxControlBytes: 8 * 1024 * 1024,
  /** PINGs a peer may send per second; a peer pings once per interval, so more is a flood (PING_FLOOD). */
  maxPingsPerSecond: 100,
  /**
   * A send the transport has not completed for this long, with no other send
   * completing meanwhile: the peer has stopped reading (its TCP window and
   * ours are full), and the session closes (PEER_NOT_READING).
   */
  sendStallTimeoutMs: 5_000,
  /**
   * Frames (WINDOW, FIN, RESET, OPEN_OK) a peer may still send for each
   * stream after it has ended here, for the frames in flight as it ended.
   */
  lateFramesPerClosedStream: 16,
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
