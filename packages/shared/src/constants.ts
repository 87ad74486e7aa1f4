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
  /**
   * Tunnels one dial may try: a stream refused before it started (the agent
   * draining, its tunnel closing) is opened on another tunnel of the
   * cluster, within the same dial timeout (see retryElsewhere).
   */
  dialAttempts: 3,
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

  // Connection limits of the listeners (see packages/shared/src/net/guard.ts).
  // "Pending" is a connection still in its TLS handshake or that has not yet
  // sent a whole first request head: it has proved nothing, so a flood of
  // them must not crowd out real clients. Past a pending limit the OLDEST
  // pending connection is closed (a real client finishes its handshake and
  // head in milliseconds; a flood's connections are the ones that wait), so
  // new clients still get in while junk is being shed. Past a total limit a
  // new connection is closed at accept, before any TLS work.

  /**
   * Frontend (--max-connections): client connections open at once. Every
   * CONNECT stream is a connection of its own; the benchmark holds 10,000 of
   * them, so this leaves room for twice that. A connection costs a file
   * descriptor and about 50 KiB (TLS socket and buffers): 20,000 is about
   * 1 GiB at worst, and far below the open-file limit of a container.
   */
  maxConnections: 20_000,
  /**
   * Frontend (--max-pending-connections): connections in the TLS handshake or
   * before their first request head. 1,024 of them hold at most about 50 MiB;
   * the benchmark's clients run 200 handshakes at once, kubectl one or a few.
   */
  maxPendingConnections: 1024,
  /**
   * Pending connections from one source address, on the frontend and the
   * agent gateway (--max-pending-per-source). 0, off: every client behind
   * one NAT or load balancer shares an address, and a cluster's agents often
   * leave through one NAT. Set it where clients reach the hub directly.
   */
  maxPendingPerSource: 0,
  /**
   * Agent gateway (--max-agent-connections): agent tunnels open at once (one
   * per agent per replica; the benchmark registers 1,000 agents).
   */
  maxAgentConnections: 10_000,
  /**
   * Agent gateway: connections in the handshake or before their upgrade
   * request. Above a reconnect storm of the benchmark's 1,000 agents at once
   * (agents whose pending connection is closed retry with backoff).
   */
  maxPendingAgentConnections: 2048,
  /**
   * Server health and admin ports and the agent's health port: probes,
   * `kubetunnel status` and Prometheus need a handful of connections.
   */
  maxPlainConnections: 128,
  maxPendingPlainConnections: 32,
  /**
   * TLS handshake, from accept to the end of the handshake (--handshake-timeout).
   * A handshake takes a few round trips: milliseconds, or a second on a bad
   * link. A TCP connection that never sends a ClientHello is closed after it.
   */
  handshakeTimeoutMs: 10_000,
  /**
   * A request head (--header-timeout): the first one from the end of the
   * handshake (or accept, without TLS), later ones on a keep-alive connection
   * from their first byte. Clients send a head in one write; a head trickled
   * a byte at a time (slow loris) is answered 408 and closed after it. The
   * head only: a request body, a CONNECT tunnel, an upgraded stream or a
   * watch is never cut by it.
   */
  headerTimeoutMs: 10_000,
  /**
   * A whole request, body included, on the proxy and agent ports: Node's own
   * default, kept. It bounds a body trickled by anyone (a refused request
   * with a huge Content-Length); a Kubernetes request body takes seconds,
   * and a CONNECT tunnel, an upgraded connection (exec, port-forward) or a
   * response (watch, logs -f) is never cut by it.
   */
  requestTimeoutMs: 300_000,
  /**
   * Keep-alive (--idle-timeout): how long a connection may sit idle between
   * two requests. Long enough that kubectl and controllers reuse their
   * connections between bursts; short enough that idle ones do not pile up.
   */
  idleTimeoutMs: 30_000,
  /** How often a listener's refused connections are summed up in one log line. */
  refusalLogIntervalMs: 10_000,
} as const;
