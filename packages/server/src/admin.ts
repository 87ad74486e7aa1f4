import http from 'node:http';
import { isValidClusterName, parseOriginForm, sendText } from '@kubetunnel/shared';
import type { ServerMetrics } from './metrics.js';
import type { ClusterRegistry } from './registry.js';

const TEXT = 'text/plain; charset=utf-8';

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

/** Admin: GET /clusters, /clusters/NAME/ca.crt, /metrics. Plain HTTP; bind it to loopback or a private network. */
export function createAdminServer(serverId: string, registry: ClusterRegistry, metrics: ServerMetrics): http.Server {
  return http.createServer((req, res) => {
    const target = parseOriginForm(req.url);
    if (!target) return sendText(res, 400, TEXT, 'request target must be a path\n');
    if (req.method !== 'GET') return sendText(res, 405, TEXT, 'GET only\n');
    const path = target.path;
    if (path === '/clusters') return sendText(res, 200, 'application/json', JSON.stringify(clustersReport(serverId, registry)) + '\n');
    const m = /^\/clusters\/([^/]+)\/ca\.crt$/.exec(path);
    if (m) {
      // Cluster names are DNS labels: nothing in them is percent-encoded.
      const name = m[1]!;
      if (!isValidClusterName(name)) return sendText(res, 400, TEXT, 'invalid cluster name: want a DNS label (a-z, 0-9, -; at most 63)\n');
      const c = registry.get(name);
      const ca = c && [...c.agents.values()].find((t) => t.apiserverCA)?.apiserverCA;
      if (!ca) return sendText(res, 404, TEXT, `no apiserver CA known for cluster "${name}"\n`);
      return sendText(res, 200, 'application/x-pem-file', ca);
    }
    if (path === '/metrics') {
      metrics.registry.metrics().then(
        (text) => sendText(res, 200, metrics.registry.contentType, text),
        (err: unknown) => sendText(res, 500, TEXT, `${String(err)}\n`),
      );
      return;
    }
    sendText(res, 404, TEXT, 'not found: try /clusters or /metrics\n');
  });
}
