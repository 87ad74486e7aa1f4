import http from 'node:http';
import type { ServerMetrics } from './metrics.js';
import type { ClusterRegistry } from './registry.js';

/** The JSON of GET /clusters: scripts rely on these names and meanings. */
export function clustersReport(serverId: string, registry: ClusterRegistry) {
  return {
    serverId,
    clusters: registry.entries().map((c) => ({
      name: c.name,
      openStreams: c.openStreams,
      pendingDials: c.pendingDials,
      agents: [...c.agents.values()].map((t) => ({
        id: t.agentId,
        sessionId: t.sessionId,
        openStreams: t.session.openStreams,
        pendingDials: t.session.pendingOpens,
        draining: t.session.draining || t.session.peerDraining,
        rttMs: t.session.rttMs === undefined ? null : Math.round(t.session.rttMs * 1000) / 1000,
        bytesIn: t.session.bytesIn,
        bytesOut: t.session.bytesOut,
        connectedAt: t.connectedAt.toISOString(),
        allowDest: [...t.allowDest],
        l7: t.l7,
        hasApiserverCA: t.apiserverCA !== undefined,
      })),
    })),
  };
}

function send(res: http.ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
  res.end(body);
}

/** Admin: GET /clusters, /clusters/NAME/ca.crt, /metrics. Plain HTTP; bind it to loopback or a private network. */
export function createAdminServer(serverId: string, registry: ClusterRegistry, metrics: ServerMetrics): http.Server {
  return http.createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (req.method !== 'GET') return send(res, 405, 'text/plain', 'GET only\n');
    if (path === '/clusters') return send(res, 200, 'application/json', JSON.stringify(clustersReport(serverId, registry)) + '\n');
    const m = /^\/clusters\/([^/]+)\/ca\.crt$/.exec(path);
    if (m) {
      const c = registry.get(decodeURIComponent(m[1]!));
      const ca = c && [...c.agents.values()].find((t) => t.apiserverCA)?.apiserverCA;
      if (!ca) return send(res, 404, 'text/plain', `no apiserver CA known for cluster "${m[1]}"\n`);
      return send(res, 200, 'application/x-pem-file', ca);
    }
    if (path === '/metrics') {
      metrics.registry.metrics().then(
        (text) => send(res, 200, metrics.registry.contentType, text),
        (err: unknown) => send(res, 500, 'text/plain', `${String(err)}\n`),
      );
      return;
    }
    send(res, 404, 'text/plain', 'not found: try /clusters or /metrics\n');
  });
}

/** Health: /healthz while the process runs, /readyz unless draining. */
export function createHealthServer(isReady: () => true | string): http.Server {
  return http.createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (path === '/healthz' || path === '/livez') return send(res, 200, 'text/plain', 'ok\n');
    if (path === '/readyz') {
      const r = isReady();
      return r === true ? send(res, 200, 'text/plain', 'ok\n') : send(res, 503, 'text/plain', `${r}\n`);
    }
    send(res, 404, 'text/plain', 'not found: try /healthz or /readyz\n');
  });
}
