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

/** The agents of one cluster as GET /clusters reports them. */
export type AgentReport = ReturnType<typeof clustersReport>['clusters'][number]['agents'][number];

/** GET /clusters of several workers of one server process: each agent row names the worker (server id) it is connected to. */
export interface MergedClustersReport {
  serverId: string;
  /** The server ids of the workers that answered. */
  workers: string[];
  clusters: Array<{ name: string; openStreams: number; pendingDials: number; agents: Array<AgentReport & { serverId: string }> }>;
}

/**
 * One report of the reports of every worker: a cluster is listed once, with
 * the streams and dials of every worker added up and the agent tunnels of
 * every worker (an agent connected to two workers is listed twice, once per
 * server id).
 */
export function mergeClustersReports(serverId: string, reports: ReturnType<typeof clustersReport>[]): MergedClustersReport {
  const clusters = new Map<string, MergedClustersReport['clusters'][number]>();
  for (const r of reports) {
    for (const c of r.clusters) {
      let m = clusters.get(c.name);
      if (!m) clusters.set(c.name, (m = { name: c.name, openStreams: 0, pendingDials: 0, agents: [] }));
      m.openStreams += c.openStreams;
      m.pendingDials += c.pendingDials;
      for (const a of c.agents) m.agents.push({ ...a, serverId: r.serverId });
    }
  }
  return {
    serverId,
    workers: reports.map((r) => r.serverId),
    clusters: [...clusters.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
  };
}

/** What the admin port reports: one server's registry and metrics, or (workers.ts) every worker's. */
export interface AdminSource {
  clusters(): Promise<unknown>;
  /** The member apiserver CA an agent of the cluster reported, if any. */
  clusterCA(name: string): Promise<string | undefined>;
  metrics(): Promise<{ contentType: string; text: string }>;
}

/** The admin source of one server. */
export function registryAdminSource(serverId: string, registry: ClusterRegistry, metrics: ServerMetrics): AdminSource {
  return {
    clusters: async () => clustersReport(serverId, registry),
    async clusterCA(name) {
      const c = registry.get(name);
      return c && [...c.agents.values()].find((t) => t.apiserverCA)?.apiserverCA;
    },
    metrics: async () => ({ contentType: metrics.registry.contentType, text: await metrics.registry.metrics() }),
  };
}

/** Admin: GET /clusters, /clusters/NAME/ca.crt, /metrics. Plain HTTP; bind it to loopback or a private network. */
export function createAdminServer(serverId: string, registry: ClusterRegistry, metrics: ServerMetrics): http.Server {
  return createAdminServerOf(registryAdminSource(serverId, registry, metrics));
}

/** The admin server over any source. */
export function createAdminServerOf(source: AdminSource): http.Server {
  const failed = (res: http.ServerResponse) => (err: unknown) => sendText(res, 500, TEXT, `${(err as Error).message ?? String(err)}\n`);
  return http.createServer((req, res) => {
    const target = parseOriginForm(req.url);
    if (!target) return sendText(res, 400, TEXT, 'request target must be a path\n');
    if (req.method !== 'GET') return sendText(res, 405, TEXT, 'GET only\n');
    const path = target.path;
    if (path === '/clusters') {
      source.clusters().then((r) => sendText(res, 200, 'application/json', JSON.stringify(r) + '\n'), failed(res));
      return;
    }
    const m = /^\/clusters\/([^/]+)\/ca\.crt$/.exec(path);
    if (m) {
      // Cluster names are DNS labels: nothing in them is percent-encoded.
      const name = m[1]!;
      if (!isValidClusterName(name)) return sendText(res, 400, TEXT, 'invalid cluster name: want a DNS label (a-z, 0-9, -; at most 63)\n');
      source.clusterCA(name).then(
        (ca) => (ca ? sendText(res, 200, 'application/x-pem-file', ca) : sendText(res, 404, TEXT, `no apiserver CA known for cluster "${name}"\n`)),
        failed(res),
      );
      return;
    }
    if (path === '/metrics') {
      source.metrics().then((r) => sendText(res, 200, r.contentType, r.text), failed(res));
      return;
    }
    sendText(res, 404, TEXT, 'not found: try /clusters or /metrics\n');
  });
}
