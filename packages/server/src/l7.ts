import http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import httpProxy from 'http-proxy';
import {
  identityProblem,
  onProxyResponse,
  relayUpgrade,
  sendStatus,
  sendStatusRaw,
  stripCallerHeaders,
  upgradeRequestHeaders,
  type Identity,
  type Logger,
  type MuxStream,
} from '@kubetunnel/shared';
import { authenticate } from './auth.js';
import type { FrontendDeps } from './deps.js';
import { dialCluster, type DialResult } from './dial.js';
import { connectOnly, type HttpHandlers } from './frontend.js';
import { httpAnswer, refusal, refused, type Outcome, type Refusal } from './refusal.js';
import { routeL7Request } from './routing/resolve.js';
import { l7Request } from './routing/target.js';

export interface L7Deps extends FrontendDeps {
  /** One line per L7 request (user, cluster, method, path, status, bytes, duration). */
  audit: Logger;
  /** TLS server names <cluster>.<suffix> select a cluster for L7 requests. */
  serverNameSuffix: string;
}

/** An http.Agent that hands out one already-open tunnel stream. */
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

/**
 * Routes and authenticates an L7 request: its cluster and path, the
 * caller's identity (refused before any OPEN when no header or OPEN frame
 * can carry it, see identity.ts), the headers for the member. Undefined:
 * not an L7 request.
 */
function prepare(deps: L7Deps, req: IncomingMessage): Outcome<Prepared> | undefined {
  const route = routeL7Request(req, deps.serverNameSuffix);
  if (!route) return undefined;
  if (!route.ok) return route;
  const auth = authenticate(req.socket as TLSSocket, req.headers.authorization, deps.tokens);
  if (!auth.ok) return refused('UNAUTHENTICATED', `Unauthorized: ${auth.refusal.message}`);
  const problem = identityProblem(auth.identity);
  if (problem) return refused(problem.cause, problem.reason);
  return { ok: true, route: { cluster: route.cluster, path: route.path }, identity: auth.identity, headers: memberHeaders(req) };
}

/**
 * The caller's headers as the member is sent them: no credentials or
 * identity headers (stripCallerHeaders), no X-Cluster-Name, and of the
 * Connection header only the keep-alive intent (names listed in it are
 * dropped with it).
 */
function memberHeaders(req: IncomingMessage): http.OutgoingHttpHeaders {
  const headers = stripCallerHeaders(req.headers);
  delete headers['x-cluster-name'];
  headers.connection = /(^|,)\s*close\s*(,|$)/i.test(String(req.headers.connection ?? '')) ? 'close' : 'keep-alive';
  return headers;
}

/** True when a request announces a body (any Transfer-Encoding, or a non-zero Content-Length). */
function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/** The http-proxy that sends plain requests through a stream: the member's answer is relayed as it comes. */
function createProxy(log: Logger): httpProxy {
  const proxy = httpProxy.createProxyServer({ xfwd: false, ignorePath: false });
  proxy.on('proxyRes', (upstream: IncomingMessage, _req: IncomingMessage, res: ServerResponse) => onProxyResponse(upstream, res));
  proxy.on('error', (err: Error, _req: IncomingMessage, res: ServerResponse | Duplex) => {
    log.debug({ err: err.message }, 'L7 proxy error');
    if ('writeHead' in res) sendStatus(res, 502, `tunnel to the member cluster failed: ${err.message}`);
    else res.destroy();
  });
  return proxy;
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
export function l7Handlers(deps: L7Deps): HttpHandlers {
  const l7 = new L7Frontend(deps);
  return { request: (req, res) => l7.request(req, res), upgrade: (req, socket, head) => l7.upgrade(req, socket, head) };
}

class L7Frontend {
  private readonly proxy: httpProxy;

  constructor(private readonly deps: L7Deps) {
    this.proxy = createProxy(deps.log);
  }

  /** A plain request: proxied through the stream by http-proxy, the answer relayed as it comes. */
  request(req: IncomingMessage, res: ServerResponse): void {
    const started = performance.now();
    const answer = (a: Answer) => sendStatus(res, a.status, a.message, a.headers);
    const p = this.admit(req, answer);
    if (p === undefined) {
      if (!res.headersSent) connectOnly.request(req, res);
      return;
    }
    const gone = new AbortController();
    res.once('close', () => gone.abort());
    const proxied = this.dial(p, gone.signal).then((result) => {
      if (!result.ok) return this.answerRefusal(p, req, result.refusal, started, answer);
      const { stream } = result;
      if (res.destroyed) return void stream.destroy();
      res.once('close', () => {
        this.audit(p, req, res.statusCode, stream, started);
        if (!stream.destroyed) stream.destroy();
      });
      req.headers = p.headers as http.IncomingHttpHeaders;
      req.url = p.route.path;
      this.proxy.web(req, res, { target: `http://${p.route.cluster}`, agent: new StreamAgent(stream), changeOrigin: false });
    });
    void this.guard(proxied, (message) => sendStatus(res, 500, message));
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
  private admit(req: IncomingMessage, answer: (a: Answer) => void, check?: (req: IncomingMessage) => Refusal | undefined): Prepared | undefined {
    const p = prepare(this.deps, req);
    if (p === undefined) return undefined;
    if (p.ok) {
      const r = check?.(req);
      if (r === undefined) return p;
      this.refuse(req, r, answer);
    } else this.refuse(req, p.refusal, answer);
    return undefined;
  }

  /** Counts, logs and answers a refusal made before any dial. */
  private refuse(req: IncomingMessage, r: Refusal, answer: (a: Answer) => void): void {
    const { status, headers } = httpAnswer(r, 'origin');
    this.deps.metrics.refused('l7', r.reason);
    this.deps.log.info({ status, reason: r.message, remote: req.socket.remoteAddress }, 'L7 request refused');
    answer({ status, message: r.message, headers });
  }

  private dial(p: Prepared, signal: AbortSignal): Promise<DialResult> {
    return dialCluster(this.deps, { cluster: p.route.cluster, identity: p.identity, request: l7Request(p.identity), frontend: 'l7', signal });
  }

  /** Answers a dial the cluster refused (dialCluster counted it), and audits it. */
  private answerRefusal(p: Prepared, req: IncomingMessage, r: Refusal, started: number, answer: (a: Answer) => void): void {
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

  private audit(p: Prepared, req: IncomingMessage, status: number, stream: MuxStream | undefined, started: number, upgrade?: string): void {
    this.deps.audit.info(
      {
        user: p.identity.user,
        groups: p.identity.groups,
        cluster: p.route.cluster,
        method: req.method,
        path: logPath(p.route.path),
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
