import fs from 'node:fs';
import net from 'node:net';
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { buildConnector, Pool, type Dispatcher } from 'undici';
import type { Logger } from '../logging.js';
import type { MuxStream } from '../mux/stream.js';
import type { Identity } from '../protocol/frame.js';
import { http1HasBody, impersonationHeaders, stripCallerHeaders, undiciRequestHeaders } from './headers.js';
import { ResponseRelay } from './response-relay.js';
import { EndAfterRead } from './end-after-read.js';
import { identityProblem } from './identity.js';
import { sendStatus, sendStatusRaw } from '../http/respond.js';
import { relayUpgrade, upgradeRequestHeaders } from './upgrade.js';
import { clientContext } from '../tls.js';
import { H2Upstream, isWatch } from './h2-upstream.js';

/** How the member side reaches its apiserver: a byte stream to it for one connection (TLS is started on it here), or an error. */
export type ApiserverConnector = (done: (err: Error | null, socket: Duplex) => void) => void;

export interface MemberHttpConfig {
  /** The member apiserver (its host and port; the Host header of every request). */
  apiserver: URL;
  /** TLS toward the apiserver: the CA it is checked with, a client certificate and key, the name checked on its certificate. */
  tls?: { ca?: string; cert?: string; key?: string; servername?: string };
  /** The bearer token of whoever impersonates the callers (a service account's), read for each request (it may rotate). */
  token(): string | undefined;
  /**
   * A connection to the apiserver other than a TCP connection of this
   * process (the hub reaches it through an ANP agent's dial); TLS to the
   * apiserver runs over it as over a TCP connection.
   */
  connect?: ApiserverConnector;
  /**
   * Keep connections to the apiserver for later requests (default true).
   * Kept TCP connections of this process (no `connect`) also carry watches
   * over HTTP/2 when the apiserver offers it.
   */
  keepAlive?: boolean;
  log: Logger;
}

/** Answers a failed request with a Kubernetes Status, or ends a connection that is past its head. */
function fail(res: ServerResponse | Duplex, code: number, message: string): void {
  if ('writeHead' in res) sendStatus(res, code, message);
  else res.destroy();
}

/** A token file re-read at most every few seconds (kubelet rotates projected tokens in place). */
export function fileToken(file: string | undefined): () => string | undefined {
  let value: string | undefined;
  let readAt = 0;
  return () => {
    if (!file) return undefined;
    const now = Date.now();
    if (now - readAt > 5000) {
      readAt = now;
      try {
        value = fs.readFileSync(file, 'utf8').trim();
      } catch {
        // Keep the last good token; the apiserver will answer 401 if it is stale.
      }
    }
    return value;
  };
}

/** A URL's host as a socket takes it: an IPv6 address without its brackets. */
function hostOf(url: URL): string {
  return url.hostname.replace(/^\[(.*)\]$/, '$1');
}

/** TLS toward the apiserver: one secure context (its CA, a client certificate) for every connection, and the name on its certificate unless it is an address. */
interface ApiserverTls {
  secureContext: tls.SecureContext;
  servername?: string;
}

/**
 * TLS options toward the apiserver, for the pool's connections and each
 * upgrade's own. The CA and client certificate go in a secure context made
 * once (clientContext): tls.connect would otherwise parse them again for
 * every connection.
 */
function tlsOptions(config: MemberHttpConfig): ApiserverTls {
  const t = config.tls ?? {};
  const host = hostOf(config.apiserver);
  const servername = t.servername ?? (net.isIP(host) ? undefined : host);
  return { secureContext: clientContext(t), ...(servername ? { servername } : {}) };
}

/** How long a connection to the apiserver may take to be made, TLS included (undici's default too). */
const CONNECT_TIMEOUT_MS = 10_000;

/** A connection from `connector` with TLS to the apiserver started on it. */
function connectTls(connector: ApiserverConnector, options: ApiserverTls, done: (err: Error | null, socket: Duplex) => void): void {
  connector((err, raw) => {
    if (err) return done(err, raw);
    const socket = tls.connect({ socket: raw, ...options, ALPNProtocols: ['http/1.1'] });
    noDelay(socket);
    // Closing either ends the other: the TLS socket does not always end what it runs on.
    socket.once('close', () => raw.destroy());
    raw.once('close', () => socket.destroy());
    done(null, socket);
  });
}

/**
 * No Nagle delay toward the apiserver: a request whose head and body (or
 * body and chunked terminator) leave in separate writes must not wait for
 * the apiserver's delayed ACK of the first. The pool turns it off on the
 * connections it makes; connections from a connector, and an upgrade's (Node's
 * https.request does not), get it here. Over a connector's stream that is
 * not TCP it does nothing.
 */
function noDelay(socket: Duplex): void {
  (socket as Partial<net.Socket>).setNoDelay?.(true);
}

/**
 * A TLS connection to the apiserver offering HTTP/2 and HTTP/1.1, handed
 * over once its handshake is done (the chosen protocol known), or the
 * reason it could not be made in time.
 */
function connectOfferingH2(url: URL, options: ApiserverTls, done: (err: Error | null, socket?: tls.TLSSocket) => void): void {
  const socket = tls.connect({ host: hostOf(url), port: Number(url.port || 443), ...options, ALPNProtocols: ['h2', 'http/1.1'] });
  socket.setNoDelay(true);
  socket.setKeepAlive(true, 30_000);
  const fail = (err: Error) => {
    socket.destroy();
    done(err);
  };
  const timer = setTimeout(() => fail(new Error('timed out connecting to the apiserver')), CONNECT_TIMEOUT_MS);
  socket.once('error', fail);
  socket.once('secureConnect', () => {
    clearTimeout(timer);
    socket.off('error', fail);
    done(null, socket);
  });
}

/** A stream's caller as its requests need it: the impersonation headers for it, or why it cannot be served. */
type Caller = { impersonation: http.OutgoingHttpHeaders } | { status: number; reason: string };

/**
 * The member side of L7: each stream it is handed carries HTTP/1.1 requests
 * for one caller, whose identity came in the stream's OPEN. Every request
 * goes to the apiserver with the impersonator's own credentials and
 * impersonation headers for that identity; whatever credential or identity
 * header arrived is removed first (the hub removed them too). Requests go
 * on kept connections to the apiserver (an undici Pool), watches over one
 * HTTP/2 connection where the apiserver offers it (H2Upstream), and answers
 * stream back as they arrive; upgrades (exec, attach, port-forward) are relayed on
 * a connection of their own. The agent runs it next to its apiserver; the
 * hub runs it for clusters served by ANP agents, which only dial TCP.
 */
export class MemberHttp {
  private readonly server: http.Server;
  /**
   * The caller of each stream being served, keyed by the stream (the socket
   * of its requests): the impersonation headers for it, or why it cannot be
   * served. Worked out once per stream, as its OPEN named the caller once.
   */
  private readonly callers = new WeakMap<Duplex, Caller>();
  /** Kept connections to the apiserver, for every request but upgrades (over HTTP/1.1). */
  private readonly pool: Pool;
  /** Watches over HTTP/2 when the apiserver speaks it, else to the pool. */
  private readonly h2?: H2Upstream;
  private readonly tls: ApiserverTls;
  private readonly keepAlive: boolean;
  /** How a failure to reach the apiserver is answered (whose side could not). */
  private readonly unreachable: string;

  constructor(private readonly config: MemberHttpConfig) {
    this.tls = tlsOptions(config);
    this.keepAlive = config.keepAlive ?? true;
    this.unreachable = `${config.connect ? 'the hub' : 'agent'} could not reach the apiserver`;
    const connect = config.connect;
    // TLS over a connector's stream, else a TLS connection of undici's own (which turns Nagle off).
    const tcp = buildConnector({ ...this.tls });
    const open = (options: buildConnector.Options, done: (err: Error | null, socket: Duplex) => void) =>
      connect ? connectTls(connect, this.tls, done) : tcp(options, (err, socket) => done(err, socket as Duplex));
    this.pool = new Pool(config.apiserver.origin, {
      // Every connection with its end held back until its last bytes are read (EndAfterRead).
      connect: (options, done) =>
        open(options, (err, socket) => (err ? done(err, null) : done(null, new EndAfterRead(socket) as unknown as net.Socket))),
      // No time limit on an answer: a watch waits for events as long as the caller keeps it.
      headersTimeout: 0,
      bodyTimeout: 0,
      keepAliveTimeout: 60_000,
      keepAliveMaxTimeout: 600_000,
    });
    if (this.keepAlive && !connect) {
      this.h2 = new H2Upstream(config.apiserver.host, (done) => connectOfferingH2(config.apiserver, this.tls, done), this.pool, 60_000);
    }
    // Keep-alive: a stream carries one request after another (the hub keeps
    // streams for its caller's later requests). keepAliveTimeout 0 means no
    // idle timeout here: the hub closes an idle stream on its own timer, so
    // this side never closes a stream just as the hub sends on it.
    this.server = http.createServer({ keepAliveTimeout: 0 });
    // Each request's error boundary: whatever throws fails that request only.
    const guarded =
      <A extends [IncomingMessage, ServerResponse | Duplex, ...unknown[]]>(handle: (...args: A) => void) =>
      (...args: A) => {
        try {
          handle(...args);
        } catch (err) {
          config.log.warn({ err }, 'L7 request failed on the member side');
          fail(args[1], 500, 'this request could not be sent to the apiserver');
        }
      };
    this.server.on('request', guarded((req: IncomingMessage, res: ServerResponse) => this.onRequest(req, res)));
    this.server.on('upgrade', guarded((req: IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(req, socket, head)));
    this.server.on('clientError', (_err, socket: Duplex) => socket.destroy());
  }

  /** Serves the HTTP requests carried by one tunnel stream, each for `identity` (the caller named in its OPEN). */
  handle(stream: MuxStream, identity: Identity): void {
    // The hub refuses these first; never throw setting headers.
    const problem = identityProblem(identity);
    this.callers.set(stream, problem ?? { impersonation: impersonationHeaders(identity) });
    this.server.emit('connection', stream);
  }

  /** The headers the apiserver gets for a request of `identity`. */
  upstreamHeaders(headers: http.IncomingHttpHeaders, identity: Identity): http.OutgoingHttpHeaders {
    return this.withImpersonation(headers, impersonationHeaders(identity));
  }

  /** The caller's headers, stripped, with the apiserver's Host, `impersonation` and the impersonator's token. */
  private withImpersonation(headers: http.IncomingHttpHeaders, impersonation: http.OutgoingHttpHeaders): http.OutgoingHttpHeaders {
    const out = stripCallerHeaders(headers);
    out.host = this.config.apiserver.host;
    Object.assign(out, impersonation);
    const token = this.config.token();
    if (token) out.authorization = `Bearer ${token}`;
    return out;
  }

  /** The caller of a request, or why it cannot be served: no identity came with its stream, or none a header can carry. */
  private callerOf(req: IncomingMessage): Caller {
    return this.callers.get(req.socket) ?? { status: 400, reason: 'L7 stream without an identity' };
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const caller = this.callerOf(req);
    if ('reason' in caller) return sendStatus(res, caller.status, caller.reason);
    const headers = undiciRequestHeaders(this.withImpersonation(req.headers, caller.impersonation));
    const body = http1HasBody(req.headers) ? req : null;
    const options: Dispatcher.DispatchOptions = { path: req.url ?? '/', method: req.method as Dispatcher.HttpMethod, headers, body, reset: !this.keepAlive };
    // Watches share one HTTP/2 connection where the apiserver offers it; a short request costs Node
    // less over a kept HTTP/1.1 connection, a LIST less still (docs/benchmarks.md, the apiserver hop).
    const upstream = this.h2 && isWatch(options.path) ? this.h2 : this.pool;
    upstream.dispatch(options, new ResponseRelay(res, (err) => {
      this.config.log.debug({ err: err.message }, 'apiserver request failed');
      sendStatus(res, 502, `${this.unreachable}: ${err.message}`);
    }));
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const caller = this.callerOf(req);
    if ('reason' in caller) return sendStatusRaw(socket, caller.status, caller.reason);
    const headers = upgradeRequestHeaders(this.withImpersonation(req.headers, caller.impersonation), req.headers.upgrade);
    const connect = this.config.connect;
    const out = https.request({
      host: this.config.apiserver.hostname,
      port: this.config.apiserver.port || 443,
      method: req.method,
      path: req.url,
      headers,
      ...this.tls,
      // A connection of its own (an upgraded one is never reused): from the connector, else a new TLS connection.
      ...(connect
        ? { createConnection: (_o: unknown, done: (err: Error | null, s: Duplex) => void) => void connectTls(connect, this.tls, done) }
        : { agent: false }),
    });
    // Interactive streams (exec, attach): each keystroke goes out at once.
    out.setNoDelay(true);
    relayUpgrade(socket, head, out, () => {});
  }

  close(): void {
    this.server.close();
    this.h2?.close();
    void this.pool.destroy().catch(() => {});
  }
}
