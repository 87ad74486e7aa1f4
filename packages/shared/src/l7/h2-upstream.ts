import http2 from 'node:http2';
import { STATUS_CODES, type OutgoingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import type { Dispatcher } from 'undici';

const { NGHTTP2_CANCEL } = http2.constants;

/**
 * Receive windows toward the apiserver: up to 1 MiB of one answer, and 32 MiB
 * of all a connection's answers, may arrive before the caller reads them.
 * Node's default, 64 KiB for both, would let one connection carry 64 KiB per
 * round trip whatever its number of streams. The connection's window is 32
 * times a stream's, so one caller that stops reading cannot stall the others.
 */
const H2_STREAM_WINDOW = 1 << 20;
const H2_SESSION_WINDOW = 32 << 20;

/** Streams a connection takes until the apiserver's SETTINGS say otherwise (RFC 9113 suggests no fewer than 100). */
const INITIAL_STREAM_LIMIT = 100;

/** The largest header block sent: what a Go apiserver reads (http.DefaultMaxHeaderBytes, 1 MiB). */
const MAX_HEADER_BLOCK = 1 << 20;

/** How long the apiserver may take to send its SETTINGS on a new connection. */
const SETTINGS_TIMEOUT_MS = 10_000;

/** Request headers HTTP/2 forbids (RFC 9113 section 8.2.2); Host becomes :authority. */
const H2_FORBIDDEN = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'http2-settings', 'te', 'host']);

/** Paths of the older watch form: /api/v1/watch/..., /apis/GROUP/VERSION/watch/... */
const WATCH_PATH = /^\/(?:api\/[^/]+|apis\/[^/]+\/[^/]+)\/watch\//;
/** What the apiserver reads as true in `?watch=` (Go's strconv.ParseBool). */
const TRUE = new Set(['1', 't', 'T', 'true', 'TRUE', 'True']);

/** True for a watch request (`?watch=true`, as client-go sends it, or the older /watch/ path): an answer that lasts. */
export function isWatch(path: string): boolean {
  const q = path.indexOf('?');
  if (WATCH_PATH.test(q < 0 ? path : path.slice(0, q))) return true;
  const value = q < 0 ? null : new URLSearchParams(path.slice(q + 1)).get('watch');
  return value !== null && TRUE.has(value);
}

/** Opens a TLS connection to the apiserver that offers `h2` and `http/1.1` by ALPN. */
export type H2Opener = (done: (err: Error | null, socket?: TLSSocket) => void) => void;

interface Connection {
  session: http2.ClientHttp2Session;
  /** Streams open on it. */
  streams: number;
  /** Streams it may have open at once: the apiserver's SETTINGS_MAX_CONCURRENT_STREAMS. */
  limit: number;
  /** Its SETTINGS came: it takes streams. */
  ready: boolean;
  /** Closes it when it has carried no stream for the idle time. */
  idle?: NodeJS.Timeout;
}

interface Waiting {
  options: Dispatcher.DispatchOptions;
  handler: Dispatcher.DispatchHandlers;
}

/**
 * Requests to the apiserver over HTTP/2, as client-go sends them: every
 * request given (the member side gives its watches) shares one connection,
 * and another is opened only when the apiserver's limit of streams per
 * connection is reached. Answers go to an undici handler (ResponseRelay) as undici would
 * give them, so the relay is the same over either protocol.
 *
 * The first connection tells which protocol the apiserver speaks: if ALPN
 * does not choose `h2`, that connection is closed and every request from
 * then on goes to `http1` (an undici Pool).
 */
export class H2Upstream {
  /** `probe` until the first connection tells whether the apiserver speaks HTTP/2. */
  private mode: 'probe' | 'h2' | 'http1' = 'probe';
  private readonly connections = new Set<Connection>();
  /** Requests waiting for a connection with room for another stream. */
  private waiting: Waiting[] = [];
  private connecting = false;
  private closed = false;

  constructor(
    private readonly authority: string,
    private readonly open: H2Opener,
    private readonly http1: Dispatcher,
    private readonly idleMs: number,
  ) {}

  /** Which protocol the requests go over: `probe` until the first connection is made. */
  get protocol(): 'probe' | 'h2' | 'http1' {
    return this.mode;
  }

  /** HTTP/2 connections open to the apiserver. */
  get connectionCount(): number {
    return this.connections.size;
  }

  dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandlers): void {
    if (this.mode === 'http1') {
      this.http1.dispatch(options, handler);
      return;
    }
    if (this.closed) return void handler.onError?.(new Error('the member side is closing'));
    const connection = this.withRoom();
    if (connection) return this.send(connection, options, handler);
    this.waiting.push({ options, handler });
    this.connect();
  }

  close(): void {
    this.closed = true;
    for (const c of this.connections) {
      clearTimeout(c.idle);
      c.session.destroy();
    }
    this.connections.clear();
    this.fail(new Error('the member side is closing'));
  }

  private withRoom(): Connection | undefined {
    for (const c of this.connections) if (c.ready && c.streams < c.limit && !c.session.closed && !c.session.destroyed) return c;
    return undefined;
  }

  private fail(err: Error): void {
    const waiting = this.waiting;
    this.waiting = [];
    for (const w of waiting) w.handler.onError?.(err);
  }

  /** Sends what waits on connections with room, and opens another connection if some still wait. */
  private drain(): void {
    while (this.waiting.length > 0) {
      const connection = this.withRoom();
      if (!connection) return this.connect();
      const { options, handler } = this.waiting.shift()!;
      this.send(connection, options, handler);
    }
  }

  private connect(): void {
    if (this.connecting || this.closed) return;
    this.connecting = true;
    this.open((err, socket) => {
      if (err || !socket) {
        this.connecting = false;
        return this.fail(err ?? new Error('no connection to the apiserver'));
      }
      if (this.closed) return void socket.destroy();
      if (socket.alpnProtocol !== 'h2') {
        // The apiserver speaks HTTP/1.1 only: this connection goes, and every request goes to the pool.
        socket.destroy();
        this.connecting = false;
        this.mode = 'http1';
        const waiting = this.waiting;
        this.waiting = [];
        for (const w of waiting) this.http1.dispatch(w.options, w.handler);
        return;
      }
      this.mode = 'h2';
      this.add(socket); // still connecting until its SETTINGS come
    });
  }

  private add(socket: TLSSocket): void {
    const session = http2.connect(`https://${this.authority}`, {
      createConnection: () => socket,
      // Node refuses, on its own side, a request whose header block is past 64 KiB (2,000 Impersonate-Group lines are);
      // a Go apiserver reads up to 1 MiB of headers.
      maxSendHeaderBlockLength: MAX_HEADER_BLOCK,
      settings: { enablePush: false, initialWindowSize: H2_STREAM_WINDOW },
    });
    const connection: Connection = { session, streams: 0, limit: INITIAL_STREAM_LIMIT, ready: false };
    this.connections.add(connection);
    session.once('connect', () => session.setLocalWindowSize(H2_SESSION_WINDOW));
    // It is still being made until the apiserver's SETTINGS come: streams sent before them, past a
    // limit not yet known, would wait on it for streams that may never end (watches).
    const settingsLate = setTimeout(() => session.destroy(new Error('no HTTP/2 settings from the apiserver in time')), SETTINGS_TIMEOUT_MS);
    settingsLate.unref();
    session.on('remoteSettings', (settings) => {
      connection.limit = settings.maxConcurrentStreams ?? INITIAL_STREAM_LIMIT;
      if (!connection.ready) {
        clearTimeout(settingsLate);
        connection.ready = true;
        this.connecting = false;
        this.idleFrom(connection);
      }
      this.drain();
    });
    // No new streams after GOAWAY (a restarting apiserver sends it); those open finish.
    const gone = () => {
      clearTimeout(settingsLate);
      if (!this.connections.delete(connection)) return;
      clearTimeout(connection.idle);
      if (!connection.ready) {
        // Closed before its SETTINGS came: what waited for it fails, as on a failed connect.
        this.connecting = false;
        this.fail(new Error('the apiserver closed the connection before its HTTP/2 settings'));
      } else if (this.waiting.length > 0) this.drain();
    };
    session.once('goaway', gone);
    session.once('close', gone);
    // Failures reach each stream as its own; the session's own error ends it ('close').
    session.on('error', () => {});
  }

  /** Closes `connection` once it has carried no stream for the idle time. */
  private idleFrom(connection: Connection): void {
    clearTimeout(connection.idle);
    if (connection.streams > 0 || !this.connections.has(connection)) return;
    connection.idle = setTimeout(() => {
      this.connections.delete(connection);
      connection.session.close();
    }, this.idleMs);
    connection.idle.unref();
  }

  private send(connection: Connection, options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandlers): void {
    const headers: OutgoingHttpHeaders = { ':method': options.method, ':path': options.path, ':authority': this.authority };
    for (const [name, value] of Object.entries((options.headers ?? {}) as Record<string, string | string[]>)) {
      if (!H2_FORBIDDEN.has(name)) headers[name] = value;
    }
    const body = options.body as Readable | null | undefined;
    let stream: http2.ClientHttp2Stream;
    try {
      stream = connection.session.request(headers, { endStream: !body });
    } catch (err) {
      // A header value HTTP/2 refuses, or a connection closing under us: this request fails, not the others.
      return void handler.onError?.(err as Error);
    }
    connection.streams++;
    clearTimeout(connection.idle);
    let finished = false;
    const failed = (err: Error) => {
      if (finished) return;
      finished = true;
      handler.onError?.(err);
    };
    // The handler's failure fails this request (as undici does), never the process.
    const guarded =
      <A extends unknown[]>(fn: (...args: A) => void) =>
      (...args: A) => {
        try {
          fn(...args);
        } catch (err) {
          stream.close(NGHTTP2_CANCEL);
          failed(err as Error);
        }
      };
    handler.onConnect?.(() => {
      if (!finished) stream.close(NGHTTP2_CANCEL);
    });
    stream.on('response', guarded((head: http2.IncomingHttpHeaders & http2.IncomingHttpStatusHeader) => {
      const status = Number(head[':status']);
      const raw: Buffer[] = [];
      for (const [name, value] of Object.entries(head)) {
        if (name.startsWith(':') || value === undefined) continue;
        for (const v of Array.isArray(value) ? value : [value]) raw.push(Buffer.from(name, 'latin1'), Buffer.from(String(v), 'latin1'));
      }
      handler.onHeaders?.(status, raw, () => stream.resume(), STATUS_CODES[status] ?? '');
    }));
    stream.on('data', guarded((chunk: Buffer) => {
      if (handler.onData?.(chunk) === false) stream.pause();
    }));
    stream.once('end', guarded(() => {
      if (finished) return;
      finished = true;
      handler.onComplete?.([]);
    }));
    // The stream's error comes again as its close without an end.
    stream.on('error', () => {});
    stream.once('close', () => {
      connection.streams--;
      this.idleFrom(connection);
      failed(new Error(`the apiserver's HTTP/2 stream ended before its answer (code ${stream.rstCode ?? 'none'})`));
      if (this.waiting.length > 0) this.drain();
    });
    if (body) {
      body.on('error', () => stream.close(NGHTTP2_CANCEL));
      body.pipe(stream);
    }
  }
}
