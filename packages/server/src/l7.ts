import http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import httpProxy from 'http-proxy';
import { identityProblem, onProxyResponse, isValidClusterName, relayUpgrade, stripCallerHeaders, type Identity, type Logger, type MuxStream } from '@kubetunnel/shared';
import { authenticate, type TokenIndex } from './auth.js';
import { dialCluster, type DialDeps } from './dial.js';
import { connectOnly, type HttpHandlers } from './frontend.js';
import { sendStatus, sendStatusRaw } from './kube-status.js';

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
  const m = /^\/clusters\/([^/?#]*)([^?#]*)(\?[^#]*)?$/.exec(url);
  if (m) {
    let name: string;
    try {
      name = decodeURIComponent(m[1]!);
    } catch {
      return { error: 'malformed cluster name in path' };
    }
    if (!isValidClusterName(name)) return { error: `invalid cluster name ${JSON.stringify(name)} in path` };
    return { cluster: name, path: (m[2] || '/') + (m[3] ?? '') };
  }
  if (clusterHeader !== undefined) {
    if (Array.isArray(clusterHeader) || !isValidClusterName(clusterHeader)) return { error: 'invalid X-Cluster-Name' };
    return { cluster: clusterHeader, path: url };
  }
  const suffix = `.${serverNameSuffix}`;
  if (serverName && serverNameSuffix && serverName.toLowerCase().endsWith(suffix)) {
    const name = serverName.slice(0, -suffix.length).toLowerCase();
    if (isValidClusterName(name)) return { cluster: name, path: url };
  }
  return undefined;
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
    if ('error' in route) return void fail(400, route.error);
    const auth = authenticate(req.socket as TLSSocket, req.headers.authorization, deps.tokens);
    if (!auth.ok) return void fail(401, `Unauthorized: ${auth.reason}`);
    const refused = identityProblem(auth.identity); // before any OPEN: see identity.ts
    if (refused) return void fail(refused.status, refused.reason);
    const headers = stripCallerHeaders(req.headers);
    delete headers['x-cluster-name'];
    // Only the keep-alive intent of the caller's Connection header survives
    // (names listed in it were dropped above).
    headers.connection = /(^|,)\s*close\s*(,|$)/i.test(String(req.headers.connection ?? '')) ? 'close' : 'keep-alive';
    return { route, identity: auth.identity, headers };
  };

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
      void dial(p, gone.signal).then((result) => {
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
    },

    upgrade(req, socket, head) {
      socket.on('error', () => {});
      const started = performance.now();
      const p = prepare(req, (code, msg) => sendStatusRaw(socket, code, msg));
      if (p === undefined) {
        if (!socket.destroyed && socket.writable) connectOnly.upgrade(req, socket, head);
        return;
      }
      const gone = new AbortController();
      socket.once('close', () => gone.abort());
      void dial(p, gone.signal).then((result) => {
        if (!result.ok) {
          sendStatusRaw(socket, result.status, result.reason, result.retryAfter ? { 'Retry-After': String(result.retryAfter) } : {});
          audit(p, req, result.status, undefined, started);
          return;
        }
        const out = http.request({
          method: req.method,
          path: p.route.path,
          headers: { ...p.headers, connection: 'Upgrade', upgrade: req.headers.upgrade },
          agent: new StreamAgent(result.stream),
        });
        relayUpgrade(socket, head, out, (status) => {
          if (!result.stream.destroyed) result.stream.destroy();
          audit(p, req, status, result.stream, started, String(req.headers.upgrade));
        });
      });
    },
  };
}
