import type { EventEmitter } from 'node:events';
import type http from 'node:http';
import type http2 from 'node:http2';
import type https from 'node:https';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { Defaults } from '../constants.js';
import { rawTextResponse } from '../http/respond.js';
import type { Logger } from '../logging.js';

/** Bounds on one listener's connections; see Defaults for each default and why. */
export interface ListenerLimits {
  /** Connections open at once; past it a new connection is closed at accept, before any TLS work. */
  maxConnections: number;
  /** Connections in the TLS handshake or before their first request head; past it the oldest of them is closed. */
  maxPending: number;
  /** The same, per source address (0: no per-source limit). */
  maxPendingPerSource: number;
  /** TLS listeners: from accept to the end of the handshake. */
  handshakeTimeoutMs: number;
  /** A request head: the first from the end of the handshake (or accept), later ones from their first byte. */
  headerTimeoutMs: number;
  /** Keep-alive: idle time allowed between two requests on a connection. */
  idleTimeoutMs: number;
  /** A whole request, body included (never less than the header timeout); 0: no bound. */
  requestTimeoutMs: number;
}

/** Why a connection was refused or cut: a closed set, shared by logs and metrics. */
export type RefusalReason =
  | 'max-connections'
  | 'max-pending'
  | 'max-pending-per-source'
  | 'handshake-timeout'
  | 'header-timeout'
  | 'accept-error';

/** The limits of a kind of listener, from Defaults; callers override fields from their config. */
export function defaultLimits(kind: 'frontend' | 'agent-gateway' | 'plain'): ListenerLimits {
  const common = {
    maxPendingPerSource: Defaults.maxPendingPerSource,
    handshakeTimeoutMs: Defaults.handshakeTimeoutMs,
    headerTimeoutMs: Defaults.headerTimeoutMs,
    idleTimeoutMs: Defaults.idleTimeoutMs,
  };
  switch (kind) {
    case 'frontend':
      return { ...common, maxConnections: Defaults.maxConnections, maxPending: Defaults.maxPendingConnections, requestTimeoutMs: Defaults.requestTimeoutMs };
    case 'agent-gateway':
      return { ...common, maxConnections: Defaults.maxAgentConnections, maxPending: Defaults.maxPendingAgentConnections, requestTimeoutMs: Defaults.requestTimeoutMs };
    case 'plain':
      // Health and admin requests have no body: the whole request within the header timeout.
      return {
        ...common,
        maxConnections: Defaults.maxPlainConnections,
        maxPending: Defaults.maxPendingPlainConnections,
        maxPendingPerSource: 0,
        requestTimeoutMs: Defaults.headerTimeoutMs,
      };
  }
}

export interface GuardOptions {
  /** The listener's name in logs and metrics (proxy, agent, health, admin). */
  name: string;
  limits: ListenerLimits;
  log: Logger;
  /** Called once per refused or cut connection (metrics). */
  onRefused?: (reason: RefusalReason) => void;
  /** How often refusals are summed up in one log line; default Defaults.refusalLogIntervalMs. */
  logIntervalMs?: number;
  /**
   * An HTTP/2-only server (gRPC): a request head is a stream's HEADERS, and
   * the guard itself closes a connection that opens no stream within the
   * header timeout (Node's HTTP/1 header timeout does not apply to HTTP/2).
   * The idle timeout is the HTTP/2 server's own to keep. A server that offers
   * both (ALPN `h2` and `http/1.1`) leaves this unset: the guard treats each
   * connection by the protocol it chose, and keeps the idle timeout of its
   * HTTP/2 ones (closeWhenIdle).
   */
  http2?: boolean;
}

export interface ListenerGuard {
  readonly name: string;
  /** Connections open now. */
  readonly open: number;
  /** Of them, those in the TLS handshake or before their first request head. */
  readonly pending: number;
  /** Closes every pending connection (at shutdown: they would otherwise hold the listener's close until a timeout). */
  destroyPending(): void;
}

interface Conn {
  key: string;
  source: string;
  raw: Socket;
  /** The socket HTTP reads: the TLS socket once the handshake is done. */
  http?: Duplex;
  timer?: NodeJS.Timeout;
}

const TIMEOUT_408 = rawTextResponse(408, 'request head not received in time');
const BAD_REQUEST_400 = rawTextResponse(400, 'malformed HTTP request');
const TOO_LARGE_431 = rawTextResponse(431, 'request headers too large');

/** Events that mean a connection has sent a whole request head ('stream': an HTTP/2 server's). */
const HEAD_EVENTS = ['request', 'connect', 'upgrade', 'checkContinue', 'checkExpectation', 'stream'] as const;

function first<T>(items: Iterable<T>): T | undefined {
  for (const item of items) return item;
  return undefined;
}

/** Whether a response is being written on an HTTP connection (then nothing else may be written on it). */
function responseInFlight(socket: Duplex): boolean {
  // The same test Node makes before answering a client error itself.
  const res = (socket as { _httpMessage?: { headersSent?: boolean } | null })._httpMessage;
  return !!res && res.headersSent === true;
}

/** Logs refusals without letting a flood flood the log: the first at once, then one sum per interval. */
class RefusalLog {
  private readonly counts = new Map<RefusalReason, number>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly o: GuardOptions) {}

  note(reason: RefusalReason, remote: string | undefined, detail?: string): void {
    this.o.onRefused?.(reason);
    if (this.timer === undefined) {
      this.o.log.info({ listener: this.o.name, reason, remote, ...(detail ? { detail } : {}) }, 'connection closed by a limit');
      this.arm();
      return;
    }
    this.counts.set(reason, (this.counts.get(reason) ?? 0) + 1);
  }

  private arm(): void {
    this.timer = setTimeout(() => this.flush(true), this.o.logIntervalMs ?? Defaults.refusalLogIntervalMs);
    this.timer.unref();
  }

  flush(rearm = false): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.counts.size === 0) return;
    this.o.log.info({ listener: this.o.name, refused: Object.fromEntries(this.counts) }, 'connections closed by limits');
    this.counts.clear();
    if (rearm) this.arm();
  }
}

/**
 * Closes an HTTP/2 connection (GOAWAY) once it has had no stream open for
 * `idleMs`: the keep-alive timeout of HTTP/1.1, for HTTP/2. A stream open
 * keeps it however quiet (a watch); until the first stream the header
 * timeout applies.
 */
function closeWhenIdle(session: http2.ServerHttp2Session, idleMs: number): void {
  let open = 0;
  let timer: NodeJS.Timeout | undefined;
  session.on('stream', (stream: http2.ServerHttp2Stream) => {
    open += 1;
    clearTimeout(timer);
    stream.once('close', () => {
      open -= 1;
      if (open > 0 || session.closed || session.destroyed) return;
      timer = setTimeout(() => session.close(), idleMs);
      timer.unref();
    });
  });
  session.once('close', () => clearTimeout(timer));
}

/**
 * Puts bounds on a listener's connections: how many at once, how many that
 * have proved nothing yet (TLS handshake or first request head unfinished,
 * overall and per source), how long a handshake, a request head and an idle
 * keep-alive connection may take. Every refusal is logged (aggregated) and
 * reported through onRefused. A CONNECT tunnel, an upgraded connection, a
 * long response or a streaming request body is never cut by these.
 *
 * Call it after the server's handlers are attached and before listen().
 */
export function guardListener(server: http.Server | https.Server | http2.Http2Server | http2.Http2SecureServer, o: GuardOptions): ListenerGuard {
  if (server.listening) throw new Error(`guardListener(${o.name}): the server is already listening`);
  const { limits } = o;
  const isTls = server instanceof tls.Server;
  const pending = new Map<string, Conn>();
  const bySource = new Map<string, Set<Conn>>();
  const log = new RefusalLog(o);
  let open = 0;

  server.maxConnections = limits.maxConnections;
  if (!o.http2) {
    const h1 = server as http.Server;
    h1.headersTimeout = limits.headerTimeoutMs;
    h1.requestTimeout = limits.requestTimeoutMs && Math.max(limits.requestTimeoutMs, limits.headerTimeoutMs);
    h1.keepAliveTimeout = limits.idleTimeoutMs;
    // Node checks request timeouts on this interval (default 30 s): make it a
    // fraction of the header timeout so that the bound is kept. Read at listen().
    (h1 as { connectionsCheckingInterval?: number }).connectionsCheckingInterval = Math.min(
      1000,
      Math.max(100, Math.floor(limits.headerTimeoutMs / 4)),
    );
  }

  const release = (conn: Conn) => {
    if (pending.get(conn.key) !== conn) return;
    pending.delete(conn.key);
    const set = bySource.get(conn.source);
    set?.delete(conn);
    if (set?.size === 0) bySource.delete(conn.source);
    clearTimeout(conn.timer);
  };

  const evict = (conn: Conn, reason: RefusalReason) => {
    release(conn);
    log.note(reason, conn.source);
    (conn.http ?? conn.raw).destroy();
  };

  // HTTP/2: the first stream's HEADERS within the header timeout, counted from
  // the end of the handshake (or accept, without TLS).
  const awaitHead = (conn: Conn) => {
    clearTimeout(conn.timer);
    conn.timer = setTimeout(evict, limits.headerTimeoutMs, conn, 'header-timeout');
    conn.timer.unref();
  };

  const handshakeTimedOut = (conn: Conn) => {
    release(conn);
    log.note('handshake-timeout', conn.source);
    conn.raw.destroy();
  };

  const keyOf = (socket: { remoteAddress?: string | undefined; remotePort?: number | undefined }) =>
    socket.remoteAddress === undefined ? undefined : `${socket.remoteAddress}|${socket.remotePort}`;

  // Registered after Node's own listener (http, or tls wrapping the socket).
  server.on('connection', (raw: Socket) => {
    const key = keyOf(raw);
    if (key === undefined) return; // gone already
    const source = raw.remoteAddress!;
    const conn: Conn = { key, source, raw };
    open++;
    raw.once('close', () => {
      open--;
      release(conn);
    });
    if (limits.maxPendingPerSource > 0) {
      const mine = bySource.get(source);
      if (mine && mine.size >= limits.maxPendingPerSource) evict(first(mine)!, 'max-pending-per-source');
    }
    if (pending.size >= limits.maxPending) {
      const oldest = first(pending.values());
      if (oldest) evict(oldest, 'max-pending');
    }
    pending.set(key, conn);
    let mine = bySource.get(source);
    if (!mine) bySource.set(source, (mine = new Set()));
    mine.add(conn);
    // The head that follows is bounded by Node's header timeout (set above),
    // which counts from the end of the handshake, or from accept without TLS.
    if (isTls) {
      conn.timer = setTimeout(handshakeTimedOut, limits.handshakeTimeoutMs, conn);
      conn.timer.unref();
    } else if (o.http2) awaitHead(conn);
  });

  if (isTls) {
    server.on('secureConnection', (socket: tls.TLSSocket) => {
      const key = keyOf(socket);
      const conn = key === undefined ? undefined : pending.get(key);
      if (!conn) return;
      conn.http = socket;
      clearTimeout(conn.timer);
      if (o.http2 || socket.alpnProtocol === 'h2') awaitHead(conn);
    });
  }
  // A server that speaks HTTP/1.1 too keeps no idle timeout of its own for its HTTP/2 connections.
  if (!o.http2) (server as EventEmitter).on('session', (session: http2.ServerHttp2Session) => closeWhenIdle(session, limits.idleTimeoutMs));

  // A whole request head: the connection is no longer pending. Marked ahead of
  // the server's own handlers, and only for events it handles (a listener
  // for 'connect' or 'upgrade' changes what Node does with such requests).
  const onHead = (req: http.IncomingMessage | http2.ServerHttp2Stream) => {
    const key = keyOf('session' in req ? (req.session?.socket ?? {}) : req.socket);
    const conn = key === undefined ? undefined : pending.get(key);
    if (conn) release(conn);
  };
  const marked = new Set<string>();
  const mark = (event: string) => {
    if (marked.has(event)) return;
    marked.add(event);
    server.prependListener(event, onHead);
  };
  for (const event of HEAD_EVENTS) if (server.listenerCount(event) > 0) mark(event);
  server.on('newListener', (event: string | symbol) => {
    if (typeof event === 'string' && (HEAD_EVENTS as readonly string[]).includes(event)) mark(event);
  });

  // Node's header and request timeouts arrive here: count them and answer
  // 408 (a server's own handler might call them malformed). Other client
  // errors are left to that handler; without one, answered as Node does.
  server.prependListener('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
      log.note('header-timeout', (socket as Socket).remoteAddress);
      if (socket.writable && !responseInFlight(socket)) socket.write(TIMEOUT_408);
      socket.destroy();
      return;
    }
    if (server.listenerCount('clientError') > 1) return;
    if (socket.writable && !responseInFlight(socket)) socket.write(err.code === 'HPE_HEADER_OVERFLOW' ? TOO_LARGE_431 : BAD_REQUEST_400);
    socket.destroy();
  });

  server.on('drop', (data?: { remoteAddress?: string }) => log.note('max-connections', data?.remoteAddress));

  // After bind: an accept error (EMFILE, ENFILE) is logged, not thrown.
  server.once('listening', () => {
    server.on('error', (err: NodeJS.ErrnoException) => {
      if (err.syscall === 'accept') log.note('accept-error', undefined, err.code);
      else o.log.error({ listener: o.name, err }, 'listener error');
    });
  });
  server.once('close', () => log.flush());

  return {
    name: o.name,
    get open() {
      return open;
    },
    get pending() {
      return pending.size;
    },
    destroyPending() {
      for (const conn of [...pending.values()]) {
        release(conn);
        (conn.http ?? conn.raw).destroy();
      }
    },
  };
}
