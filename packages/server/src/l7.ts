import type { EventEmitter } from 'node:events';
import http from 'node:http';
import type { IncomingMessage } from 'node:http';
import { Http2ServerRequest, Http2ServerResponse } from 'node:http2';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import type { Dispatcher } from 'undici';
import {
  identityProblem,
  http1HasBody,
  ResponseRelay,
  relayUpgrade,
  sendStatus,
  sendStatusRaw,
  stripCallerHeaders,
  undiciRequestHeaders,
  upgradeRequestHeaders,
  type Identity,
  type Logger,
  type MuxStream,
} from '@kubetunnel/shared';
import { authenticate } from './auth.js';
import type { FrontendDeps } from './deps.js';
import { dialCluster, type DialResult } from './dial.js';
import { connectOnly, type FrontendRequest, type FrontendResponse, type HttpHandlers } from './frontend.js';
import { DialRefused, StreamPool, type StreamPoolLimits, type StreamUse } from './l7-pool.js';
import { httpAnswer, refusal, refused, type Outcome, type Refusal } from './refusal.js';
import { routeL7Request } from './routing/resolve.js';
import { l7Request } from './routing/target.js';

export interface L7Deps extends FrontendDeps {
  /** One line per L7 request (user, cluster, method, path, status, bytes, duration). */
  audit: Logger;
  /** TLS server names <cluster>.<suffix> select a cluster for L7 requests. */
  serverNameSuffix: string;
  /** Bounds of the streams kept for later requests (default DEFAULT_POOL_LIMITS). */
  pool?: StreamPoolLimits;
}

/** An http.Agent that hands out one already-open tunnel stream (an upgrade's: never kept). */
class StreamAgent extends http.Agent {
  constructor(private readonly stream: MuxStream) {
    super({ keepAlive: false });
  }

  override createConnection(): Duplex {
    return this.stream;
  }
}

/** The path for logs: no query string (it may carry secrets). */
function logPath(path: string): string {
  const q = path.indexOf('?');
  return q < 0 ? path : path.slice(0, q);
}

/** An L7 request routed and authenticated, with the headers the member is sent. */
interface Prepared {
  route: { cluster: string; path: string };
  identity: Identity;
  headers: http.OutgoingHttpHeaders;
}

/** Who sent the requests of a client connection with one credentials header: the identity, or why it is refused. */
interface Caller {
  authorization: string | undefined;
  outcome: Outcome<{ identity: Identity }>;
}

/**
 * Routes and authenticates an L7 request: its cluster and path, the
 * caller's identity (refused before any OPEN when no header or OPEN frame
 * can carry it, see identity.ts), the headers for the member. Undefined:
 * not an L7 request.
 */
function prepare(deps: L7Deps, req: FrontendRequest, callers: WeakMap<EventEmitter, Caller>): Outcome<Prepared> | undefined {
  const route = routeL7Request(req, deps.serverNameSuffix);
  if (!route) return undefined;
  if (!route.ok) return route;
  const caller = callerOf(deps, req, callers);
  if (!caller.ok) return caller;
  return { ok: true, route: { cluster: route.cluster, path: route.path }, identity: caller.identity, headers: memberHeaders(req) };
}

/**
 * The caller of a request, worked out once for the requests of a client
 * connection that carry the same credentials header: its certificate is the
 * connection's, and a token maps to one identity for the server's life.
 * Another header on the connection is authenticated afresh.
 */
function callerOf(deps: L7Deps, req: FrontendRequest, callers: WeakMap<EventEmitter, Caller>): Outcome<{ identity: Identity }> {
  const connection = connectionOf(req);
  const authorization = req.headers.authorization;
  const known = callers.get(connection);
  if (known && known.authorization === authorization) return known.outcome;
  const outcome = identify(deps, req);
  callers.set(connection, { authorization, outcome });
  return outcome;
}

function identify(deps: L7Deps, req: FrontendRequest): Outcome<{ identity: Identity }> {
  const auth = authenticate(req.socket as TLSSocket, req.headers.authorization, deps.tokens);
  if (!auth.ok) return refused('UNAUTHENTICATED', `Unauthorized: ${auth.refusal.message}`);
  const problem = identityProblem(auth.identity);
  if (problem) return refused(problem.cause, problem.reason);
  return { ok: true, identity: auth.identity };
}

/**
 * The caller's headers as the member is sent them: no credentials or
 * identity headers (stripCallerHeaders), no X-Cluster-Name, and of the
 * Connection header only the keep-alive intent (names listed in it are
 * dropped with it). An HTTP/2 request's pseudo-headers are not headers of
 * HTTP/1.1: its :authority is the Host the member sees.
 */
function memberHeaders(req: FrontendRequest): http.OutgoingHttpHeaders {
  const headers = stripCallerHeaders(req.headers);
  delete headers['x-cluster-name'];
  for (const name of Object.keys(headers)) if (name.startsWith(':')) delete headers[name];
  if (isHttp2(req) && headers.host === undefined && req.authority) headers.host = req.authority;
  headers.connection = /(^|,)\s*close\s*(,|$)/i.test(String(req.headers.connection ?? '')) ? 'close' : 'keep-alive';
  return headers;
}

function isHttp2(req: FrontendRequest): req is Http2ServerRequest {
  return req instanceof Http2ServerRequest;
}

/** True when a request has a body: an HTTP/2 request unless its HEADERS ended the stream, an HTTP/1.1 one as its head says (http1HasBody). */
function hasBody(req: FrontendRequest): boolean {
  return isHttp2(req) ? !req.stream.endAfterHeaders : http1HasBody(req.headers);
}

/** The client connection a request came on: its streams to members are kept with it (StreamPool). */
function connectionOf(req: FrontendRequest): EventEmitter {
  return isHttp2(req) ? (req.stream.session ?? req.socket) : req.socket;
}

/** Whether a response can no longer be written (its connection or HTTP/2 stream is gone). */
function responseGone(res: FrontendResponse): boolean {
  return res instanceof Http2ServerResponse ? res.stream.destroyed : res.destroyed;
}

/** Tries of one request on kept streams: a request is sent again at most this often in all. */
const MAX_TRIES = 3;

/** One request's way through the pool: its tries, the bytes of those that are over, the stream of the latest. */
interface Attempt {
  tries: number;
  use?: StreamUse;
  bytesIn: number;
  bytesOut: number;
  /** The dial was refused: answered and audited already. */
  refused: boolean;
}

/** Adds the bytes of the latest try to the request's (once). */
function settle(attempt: Attempt): void {
  const b = attempt.use?.bytes();
  attempt.use = undefined;
  if (!b) return;
  attempt.bytesIn += b.in;
  attempt.bytesOut += b.out;
}

/** An answer to write: status, one-line message, headers. */
type Answer = { status: number; message: string; headers: Record<string, string> };

/**
 * The L7 frontend: the hub authenticates the caller (client certificate or
 * bearer token), applies the policy, and sends the request through an `http`
 * stream whose OPEN carries the caller's identity; the agent completes it
 * with its own credentials and impersonation. Caller credentials and
 * identity headers never leave the hub. A request that is not L7 goes to
 * `connectOnly`.
 */
export function l7Handlers(deps: L7Deps): HttpHandlers & { pool: StreamPool } {
  const l7 = new L7Frontend(deps);
  return {
    request: (req, res) => l7.request(req, res),
    upgrade: (req, socket, head) => l7.upgrade(req, socket, head),
    close: () => l7.close(),
    pool: l7.pool,
  };
}

class L7Frontend {
  readonly pool: StreamPool;
  /** The caller of each client connection (an HTTP/1.1 socket or an HTTP/2 session), by its latest credentials header. */
  private readonly callers = new WeakMap<EventEmitter, Caller>();

  constructor(private readonly deps: L7Deps) {
    this.pool = new StreamPool(deps.pool);
  }

  close(): void {
    this.pool.close();
  }

  /**
   * A plain request: sent on a stream of this caller to this cluster kept
   * from an earlier request of the client connection, else on a new one
   * (StreamPool); the answer is relayed as it comes. The policy is applied to
   * every request, kept stream or not.
   */
  request(req: FrontendRequest, res: FrontendResponse): void {
    const started = performance.now();
    const answer = (a: Answer) => sendStatus(res, a.status, a.message, a.headers);
    const p = this.admit(req, answer);
    if (p === undefined) {
      if (!res.headersSent) connectOnly.request(req, res);
      return;
    }
    const allowed = this.deps.authorize(p.identity, p.route.cluster);
    if (allowed !== true) {
      this.deps.metrics.refused('l7', allowed.reason);
      return this.answerRefusal(p, req, allowed, started, answer);
    }
    const attempt: Attempt = { tries: 0, bytesIn: 0, bytesOut: 0, refused: false };
    res.once('close', () => {
      settle(attempt);
      if (!attempt.refused) this.audit(p, req, res.statusCode, attempt, started);
    });
    const streams = this.pool.streamsFor(connectionOf(req), p.route.cluster, p.identity, () => this.dial(p));
    const relay = new ResponseRelay(res, (err) => this.failed(err, p, req, res, send, attempt, started), () => settle(attempt));
    const options = this.requestOptions(p, req);
    // The request on a pooled stream; sent again (see failed) with the same relay and options.
    const send = (): void => {
      attempt.tries += 1;
      attempt.use = streams.dispatch(options, relay);
    };
    send();
  }

  /** The request as undici sends it on the stream: the member's headers (undiciRequestHeaders), the body streamed as it comes. */
  private requestOptions(p: Prepared, req: FrontendRequest): Dispatcher.DispatchOptions {
    return { path: p.route.path, method: req.method as Dispatcher.HttpMethod, headers: undiciRequestHeaders(p.headers), body: hasBody(req) ? req : null };
  }

  /**
   * The request failed before its answer's head (after it, ResponseRelay cut
   * the answer short). A kept stream that failed before any byte of the
   * request went into the tunnel (it died while idle) is replaced by
   * another, for a request without a body; otherwise a failure is a 502.
   */
  private failed(err: Error, p: Prepared, req: FrontendRequest, res: FrontendResponse, send: () => void, attempt: Attempt, started: number): void {
    const use = attempt.use;
    settle(attempt);
    if (err instanceof DialRefused) {
      attempt.refused = true;
      return this.answerRefusal(p, req, err.refusal, started, (a) => sendStatus(res, a.status, a.message, a.headers));
    }
    if (responseGone(res) || res.headersSent) return void res.destroy();
    if (use?.reused === true && use.unsent() && !hasBody(req) && attempt.tries < MAX_TRIES) {
      this.deps.log.debug({ err: err.message }, 'kept L7 stream failed before the request was sent: sending it on another');
      return send();
    }
    this.deps.log.debug({ err: err.message }, 'L7 proxy error');
    sendStatus(res, 502, `tunnel to the member cluster failed: ${err.message}`);
  }

  /** An upgrade (exec, attach, port-forward): relayed byte for byte once the member answers 101 (see relayUpgrade). */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => {});
    const started = performance.now();
    const answer = (a: Answer) => sendStatusRaw(socket, a.status, a.message, a.headers);
    // An upgrade has no body: bytes after the head belong to the upgraded
    // protocol, and a body would be read by the member as its first frame.
    const p = this.admit(req, answer, (q) => (hasBody(q) ? refusal('BAD_REQUEST', 'an upgrade request carries no body') : undefined));
    if (p === undefined) {
      if (!socket.destroyed && socket.writable) connectOnly.upgrade(req, socket, head);
      return;
    }
    const gone = new AbortController();
    socket.once('close', () => gone.abort());
    const relayed = this.dial(p, gone.signal).then((result) => {
      if (!result.ok) return this.answerRefusal(p, req, result.refusal, started, answer);
      const { stream } = result;
      if (socket.destroyed) return void stream.destroy();
      const out = http.request({ method: req.method, path: p.route.path, headers: upgradeRequestHeaders(p.headers, req.headers.upgrade), agent: new StreamAgent(stream) });
      relayUpgrade(socket, head, out, (status) => {
        if (!stream.destroyed) stream.destroy();
        this.audit(p, req, status, stream, started, String(req.headers.upgrade));
      });
    });
    void this.guard(relayed, (message) => sendStatusRaw(socket, 500, message));
  }

  /**
   * prepare(), then `check` (a refusal of the frontend's own); a refusal is
   * counted, logged and answered through `answer`. Undefined: not an L7
   * request, or refused (and answered).
   */
  private admit(req: FrontendRequest, answer: (a: Answer) => void, check?: (req: FrontendRequest) => Refusal | undefined): Prepared | undefined {
    const p = prepare(this.deps, req, this.callers);
    if (p === undefined) return undefined;
    if (p.ok) {
      const r = check?.(req);
      if (r === undefined) return p;
      this.refuse(req, r, answer);
    } else this.refuse(req, p.refusal, answer);
    return undefined;
  }

  /** Counts, logs and answers a refusal made before any dial. */
  private refuse(req: FrontendRequest, r: Refusal, answer: (a: Answer) => void): void {
    const { status, headers } = httpAnswer(r, 'origin');
    this.deps.metrics.refused('l7', r.reason);
    this.deps.log.info({ status, reason: r.message, remote: req.socket.remoteAddress }, 'L7 request refused');
    answer({ status, message: r.message, headers });
  }

  private dial(p: Prepared, signal?: AbortSignal): Promise<DialResult> {
    return dialCluster(this.deps, { cluster: p.route.cluster, identity: p.identity, request: l7Request(p.identity), frontend: 'l7', ...(signal ? { signal } : {}) });
  }

  /** Answers a dial the cluster refused (dialCluster counted it), and audits it. */
  private answerRefusal(p: Prepared, req: FrontendRequest, r: Refusal, started: number, answer: (a: Answer) => void): void {
    const { status, headers } = httpAnswer(r, 'origin');
    answer({ status, message: r.message, headers });
    this.audit(p, req, status, undefined, started);
  }

  /** The error boundary of one request: whatever throws ends this request, nothing else. */
  private guard(what: Promise<void>, answer: (message: string) => void): Promise<void> {
    return what.catch((err: unknown) => {
      this.deps.log.error({ err }, 'L7 request failed');
      answer('internal error');
    });
  }

  private audit(p: Prepared, req: FrontendRequest, status: number, stream: { bytesIn: number; bytesOut: number } | undefined, started: number, upgrade?: string): void {
    this.deps.audit.info(
      {
        user: p.identity.user,
        groups: p.identity.groups,
        cluster: p.route.cluster,
        method: req.method,
        path: logPath(p.route.path),
        http: req.httpVersion,
        status,
        bytesIn: stream?.bytesIn ?? 0,
        bytesOut: stream?.bytesOut ?? 0,
        ms: Math.round(performance.now() - started),
        ...(upgrade ? { upgrade } : {}),
      },
      'l7 request',
    );
  }
}
