import http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import httpProxy from 'http-proxy';
import {
  decodeSegment,
  identityProblem,
  isValidClusterName,
  onProxyResponse,
  parseOriginForm,
  relayUpgrade,
  sendStatus,
  sendStatusRaw,
  stripCallerHeaders,
  upgradeRequestHeaders,
  type Identity,
  type Logger,
  type MuxStream,
} from '@kubetunnel/shared';
import { authenticate, type TokenIndex } from './auth.js';
import { dialCluster, type DialDeps } from './dial.js';
import { connectOnly, type HttpHandlers } from './frontend.js';

export interface L7Deps extends DialDeps {
  tokens: TokenIndex;
  log: Logger;
  /** One line per L7 request (user, cluster, method, path, status, bytes, duration). */
  audit: Logger;
  /** TLS server names <cluster>.<suffix> select a cluster for L7 requests. */
  serverNameSuffix: string;
}

export type L7Route = { cluster: string; path: string } | { error: string };

/**
 * Which cluster an L7 request is for: `/clusters/<name>/<rest>` (the rest goes
 * to the member unchanged, query included); else any path with
 * X-Cluster-Name; else any path on a TLS connection whose server name is
 * `<name>.<serverNameSuffix>` (kubectl get --raw drops the path prefix of the
 * server URL, but keeps tls-server-name). Undefined: not an L7 request.
 */
export function routeL7(
  url: string,
  clusterHeader: string | string[] | undefined,
  serverName?: string,
  serverNameSuffix?: string,
): L7Route | undefined {
  const origin = parseOriginForm(url);
  const m = origin && /^\/clusters\/([^/]*)(.*)$/.exec(origin.path);
  if (m) {
    const name = decodeSegment(m[1]!);
    if (name === undefined) return { error: 'malformed cluster name in path' };
    if (!isValidClusterName(name)) return { error: `invalid cluster name ${JSON.stringify(name)} in path` };
    return { cluster: name, path: (m[2] || '/') + origin.query };
  }
  let cluster: string | undefined;
  if (clusterHeader !== undefined) {
    if (Array.isArray(clusterHeader) || !isValidClusterName(clusterHeader)) return { error: 'invalid X-Cluster-Name' };
    cluster = clusterHeader;
  } else {
    const suffix = `.${serverNameSuffix}`;
    if (serverName && serverNameSuffix && serverName.toLowerCase().endsWith(suffix)) {
      const name = serverName.slice(0, -suffix.length).toLowerCase();
      if (isValidClusterName(name)) cluster = name;
    }
  }
  if (cluster === undefined) return undefined;
  // Only origin-form goes to a member (an absolute-form target would name another host).
  if (!origin) return { error: 'request target must be a path (origin-form)' };
  return { cluster, path: url };
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

interface Prepared {
  route: { cluster: string; path: string };
  identity: Identity;
  headers: http.OutgoingHttpHeaders;
}

/**
 * The L7 frontend: the hub authenticates the caller (client certificate or
 * bearer token), applies the policy, and sends the request through an `http`
 * stream whose OPEN carries the caller's identity; the agent completes it
 * with its own credentials and impersonation. Caller credentials and
 * identity headers never leave the hub.
 */
export function l7Handlers(deps: L7Deps): HttpHandlers {
  const proxy = httpProxy.createProxyServer({ xfwd: false, ignorePath: false });
  proxy.on('proxyRes', (upstream: IncomingMessage, _req: IncomingMessage, res: ServerResponse) => onProxyResponse(upstream, res));
  proxy.on('error', (err: Error, _req: IncomingMessage, res: ServerResponse | Duplex) => {
    deps.log.debug({ err: err.message }, 'L7 proxy error');
    if ('writeHead' in res) sendStatus(res, 502, `tunnel to the member cluster failed: ${err.message}`);
    else res.destroy();
  });

  /** Steps shared by plain requests and upgrades; answers errors through `fail`. */
  const prepare = (req: IncomingMessage, fail: (code: number, msg: string) => void): Prepared | undefined => {
    const servername = (req.socket as TLSSocket).servername;
    const route = routeL7(req.url ?? '/', req.headers['x-cluster-name'], typeof servername === 'string' ? servername : undefined, deps.serverNameSuffix);
    if (!route) return undefined;
    const refuse = (code: number, reason: 'BAD_REQUEST' | 'UNAUTHENTICATED' | 'BAD_IDENTITY', message: string) => {
      deps.metrics.failures.inc({ frontend: 'l7', reason });
      deps.log.info({ status: code, reason: message, remote: req.socket.remoteAddress }, 'L7 request refused');
      fail(code, message);
    };
    if ('error' in route) return void refuse(400, 'BAD_REQUEST', route.error);
    const auth = authenticate(req.socket as TLSSocket, req.headers.authorization, deps.tokens);
    if (!auth.ok) return void refuse(401, 'UNAUTHENTICATED', `Unauthorized: ${auth.reason}`);
    // Before any OPEN: an identity no header or OPEN frame can carry is refused here (see identity.ts).
    const refused = identityProblem(auth.identity);
    if (refused) return void refuse(refused.status, 'BAD_IDENTITY', refused.reason);
    const headers = stripCallerHeaders(req.headers);
    delete headers['x-cluster-name'];
    // Only the keep-alive intent of the caller's Connection header survives
    // (names listed in it were dropped above).
    headers.connection = /(^|,)\s*close\s*(,|$)/i.test(String(req.headers.connection ?? '')) ? 'close' : 'keep-alive';
    return { route, identity: auth.identity, headers };
  };

  /** The error boundary of one request: whatever throws ends this request, nothing else. */
  const guard = (what: Promise<void>, answer: (message: string) => void) =>
    what.catch((err: unknown) => {
      deps.log.error({ err }, 'L7 request failed');
      answer('internal error');
    });

  const dial = async (p: Prepared, signal: AbortSignal) =>
    dialCluster(deps, {
      cluster: p.route.cluster,
      identity: p.identity,
      request: { kind: 'http', target: 'apiserver', identity: p.identity },
      frontend: 'l7',
      signal,
    });

  const audit = (p: Prepared, req: IncomingMessage, status: number, stream: MuxStream | undefined, started: number, upgrade?: string) =>
    deps.audit.info(
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

  return {
    request(req, res) {
      const started = performance.now();
      const p = prepare(req, (code, msg) => sendStatus(res, code, msg));
      if (p === undefined) {
        if (!res.headersSent) connectOnly.request(req, res);
        return;
      }
      const gone = new AbortController();
      res.once('close', () => gone.abort());
      const proxied = dial(p, gone.signal).then((result) => {
        if (!result.ok) {
          sendStatus(res, result.status, result.reason, result.retryAfter ? { 'Retry-After': String(result.retryAfter) } : {});
          audit(p, req, result.status, undefined, started);
          return;
        }
        const { stream } = result;
        if (res.destroyed) return void stream.destroy();
        res.once('close', () => {
          audit(p, req, res.statusCode, stream, started);
          if (!stream.destroyed) stream.destroy();
        });
        req.headers = p.headers as http.IncomingHttpHeaders;
        req.url = p.route.path;
        proxy.web(req, res, { target: `http://${p.route.cluster}`, agent: new StreamAgent(stream), changeOrigin: false });
      });
      void guard(proxied, (message) => sendStatus(res, 500, message));
    },

    upgrade(req, socket, head) {
      socket.on('error', () => {});
      const started = performance.now();
      const p = prepare(req, (code, msg) => sendStatusRaw(socket, code, msg));
      if (p === undefined) {
        if (!socket.destroyed && socket.writable) connectOnly.upgrade(req, socket, head);
        return;
      }
      // An upgrade has no body: bytes after the head belong to the upgraded
      // protocol, and a body would be read by the member as its first frame.
      if (hasBody(req)) return sendStatusRaw(socket, 400, 'an upgrade request carries no body');
      const gone = new AbortController();
      socket.once('close', () => gone.abort());
      const relayed = dial(p, gone.signal).then((result) => {
        if (!result.ok) {
          sendStatusRaw(socket, result.status, result.reason, result.retryAfter ? { 'Retry-After': String(result.retryAfter) } : {});
          audit(p, req, result.status, undefined, started);
          return;
        }
        const { stream } = result;
        if (socket.destroyed) return void stream.destroy();
        const out = http.request({
          method: req.method,
          path: p.route.path,
          headers: upgradeRequestHeaders(p.headers, req.headers.upgrade),
          agent: new StreamAgent(stream),
        });
        relayUpgrade(socket, head, out, (status) => {
          if (!stream.destroyed) stream.destroy();
          audit(p, req, status, stream, started, String(req.headers.upgrade));
        });
      });
      void guard(relayed, (message) => sendStatusRaw(socket, 500, message));
    },
  };
}

/** True when a request announces a body (any Transfer-Encoding, or a non-zero Content-Length). */
function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}
