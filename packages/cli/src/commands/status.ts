interface AgentRow {
  id: string;
  openStreams: number;
  draining: boolean;
  rttMs: number | null;
  bytesIn: number;
  bytesOut: number;
}
interface ClustersReport {
  serverId: string;
  clusters: Array<{ name: string; openStreams: number; pendingDials: number; agents: AgentRow[] }>;
}

/** Fetches GET /clusters from the admin endpoint. */
export async function fetchClusters(admin: string): Promise<ClustersReport> {
  const url = new URL('/clusters', admin);
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  } catch (err) {
    throw new Error(`cannot reach the admin endpoint at ${url.origin}: ${(err as Error).cause ?? (err as Error).message}`);
  }
  if (!res.ok) throw new Error(`${url} answered ${res.status}: ${(await res.text()).trim()}`);
  return (await res.json()) as ClustersReport;
}

/** Fetches the member apiserver CA an agent of `cluster` reported. */
export async function fetchClusterCA(admin: string, cluster: string): Promise<string | undefined> {
  const res = await fetch(new URL(`/clusters/${encodeURIComponent(cluster)}/ca.crt`, admin), { signal: AbortSignal.timeout(5000) });
  return res.ok ? await res.text() : undefined;
}

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

/** The table `kubetunnel status` prints. */
export function formatStatus(r: ClustersReport): string {
  const rows = [['CLUSTER', 'AGENT', 'STREAMS', 'PENDING', 'RTT', 'IN', 'OUT', 'STATE']];
  for (const c of r.clusters) {
    if (c.agents.length === 0) rows.push([c.name, '-', String(c.openStreams), String(c.pendingDials), '-', '-', '-', 'no live agent']);
    for (const a of c.agents)
      rows.push([
        c.name,
        a.id,
        String(a.openStreams),
        String(c.pendingDials),
        a.rttMs === null ? '-' : `${a.rttMs.toFixed(2)}ms`,
        bytes(a.bytesIn),
        bytes(a.bytesOut),
        a.draining ? 'draining' : 'connected',
      ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  const lines = rows.map((row) => row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
  return `server ${r.serverId}: ${r.clusters.length} cluster(s)\n${lines.join('\n')}\n`;
}
