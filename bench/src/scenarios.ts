/**
 * The scenarios of issue 5, each the same work over every path (direct,
 * kubetunnel, ssh -R) in one run. Each returns the figures it measured.
 */
import type { ChildProcess } from 'node:child_process';
import { Defaults } from '@kubetunnel/shared';
import { latRuns, summary, type Lat, type LatRuns, type Route, type Summary } from './common.js';
import { client, clientHolding, endInput, startAgentPool, startClient, type Pki, type Server } from './parties.js';
import { cpuOf, progress, rssOf } from './procs.js';
import type { Ssh } from './ssh.js';

export interface Scale {
  bulkBytes: number;
  /** Runs of bulk, small, setup and fairness; their figures are min / median / max over runs. */
  runs: number;
  small: number;
  setup: number;
  probe: number;
  streams: number;
  streamClusters: number;
  agents: number;
  agentProcesses: number;
  slowBytes: number;
  slowRate: number;
  /** L7 (l7.ts): sequential small GETs per run, concurrent clients and their seconds, the LIST's size and count. */
  l7Small: number;
  l7Clients: number;
  l7Seconds: number;
  l7ListBytes: number;
  l7ListRuns: number;
  /** Watch fan-out (watch.ts): clusters, watches on each, events a second in total and for how long, per mode. */
  watchClusters: number;
  watchesPerCluster: number;
  watchRate: number;
  watchSeconds: number;
}

export const QUICK: Scale = {
  bulkBytes: 64 << 20, runs: 1, small: 500, setup: 50, probe: 200,
  streams: 1000, streamClusters: 10, agents: 100, agentProcesses: 2, slowBytes: 3 << 20, slowRate: 1 << 20,
  l7Small: 300, l7Clients: 8, l7Seconds: 2, l7ListBytes: 2 << 20, l7ListRuns: 2,
  watchClusters: 10, watchesPerCluster: 5, watchRate: 200, watchSeconds: 2,
};
export const FULL: Scale = {
  bulkBytes: 1 << 30, runs: 3, small: 10_000, setup: 500, probe: 2000,
  streams: 10_000, streamClusters: 100, agents: 1000, agentProcesses: 2, slowBytes: 16 << 20, slowRate: 1 << 20,
  l7Small: 10_000, l7Clients: 64, l7Seconds: 10, l7ListBytes: 10 << 20, l7ListRuns: 10,
  watchClusters: 200, watchesPerCluster: 20, watchRate: 2000, watchSeconds: 30,
};

/** Everything the scenarios run against. */
export interface Bench {
  scale: Scale;
  /** The run's temporary directory (configurations of the nginx chain). */
  tmp: string;
  pki: Pki;
  server: Server;
  upstreamPort: number;
  /** What the upstream and the watch scenario's stand-ins offer: HTTP/2 and HTTP/1.1 (as a kube-apiserver), or HTTP/1.1 only. */
  memberProtocols: 'h2' | 'http1';
  /** The agent processes of c1 (carries the work) and c2 (a neighbour for fairness). */
  agentC1: ChildProcess;
  agentC2: ChildProcess;
  /** Clusters c1..cN of "many streams" (c1 and c2 are the agent processes above). */
  clusters: string[];
  /** Clusters of the watch fan-out (c1..cN too, each with its certificate; watch.ts runs a hub of its own for them). */
  watchClusters: string[];
  ssh: Ssh | undefined;
  /** The node relay's route: what a Node relay of this shape can do at best (bulk and small requests). */
  relay: Route;
}

const ms = (x: number) => `${x.toFixed(3)} ms`;
const showLat = (l: Lat) => `p50 ${ms(l.p50)}, p99 ${ms(l.p99)} (${l.n})`;
const MiB = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;

/** The paths a scenario compares; `withRelay` adds the node relay. */
function paths(b: Bench, withRelay = false): Array<[string, Route]> {
  const out: Array<[string, Route]> = [
    ['direct', { kind: 'direct', port: b.upstreamPort }],
    ['kubetunnel', b.server.route('c1')],
    ['kubetunnel gRPC', b.server.grpcRoute('c1')],
  ];
  if (b.ssh) out.push(['ssh -R', { kind: 'ssh', port: b.ssh.ports[0]! }]);
  if (withRelay) out.push(['node relay', b.relay]);
  return out;
}

const base = (b: Bench) => ({ upstreamCA: b.pki.ca });

/** Runs `job` over every path, `runs` times, the paths taking turns within each run; `each` sees every run's result. */
async function latencyOverPaths<T extends Lat>(
  b: Bench,
  job: Record<string, unknown>,
  withRelay: boolean,
  each: (name: string, r: T) => string = () => '',
): Promise<Record<string, LatRuns>> {
  const runs: Record<string, Lat[]> = {};
  for (let i = 0; i < b.scale.runs; i++) {
    for (const [name, route] of paths(b, withRelay)) {
      const r = await client<T>({ ...base(b), ...job, route });
      (runs[name] ??= []).push(r);
      progress(`  run ${i + 1}/${b.scale.runs} ${name}: ${showLat(r)}${each(name, r)}`);
    }
  }
  return Object.fromEntries(Object.entries(runs).map(([k, v]) => [k, latRuns(v)]));
}

export interface BulkResult {
  mbps: Record<string, Summary>;
  /** Share of one core the server and the c1 agent used during kubetunnel's runs. */
  kubetunnelCpu: { server: number; agent: number };
}

export async function bulk(b: Bench): Promise<BulkResult> {
  const mbps: Record<string, number[]> = {};
  const cpu = { server: 0, agent: 0, seconds: 0 };
  for (let i = 0; i < b.scale.runs; i++) {
    for (const [name, route] of paths(b, true)) {
      const before = { server: cpuOf(b.server.proc.pid!), agent: cpuOf(b.agentC1.pid!), t: performance.now() };
      const r = await client<{ mbps: number[] }>({ ...base(b), job: 'bulk', route, bytes: b.scale.bulkBytes, runs: 1 });
      let share = '';
      if (name === 'kubetunnel') {
        const seconds = (performance.now() - before.t) / 1000;
        const server = cpuOf(b.server.proc.pid!) - before.server;
        const agent = cpuOf(b.agentC1.pid!) - before.agent;
        cpu.server += server;
        cpu.agent += agent;
        cpu.seconds += seconds;
        share = ` (CPU: server ${((100 * server) / seconds).toFixed(0)}%, agent ${((100 * agent) / seconds).toFixed(0)}% of a core)`;
      }
      (mbps[name] ??= []).push(...r.mbps);
      progress(`  run ${i + 1}/${b.scale.runs} ${name}: ${r.mbps.map((x) => x.toFixed(0)).join(', ')} MB/s${share}`);
    }
  }
  return {
    mbps: Object.fromEntries(Object.entries(mbps).map(([k, v]) => [k, summary(v)])),
    kubetunnelCpu: { server: cpu.server / cpu.seconds, agent: cpu.agent / cpu.seconds },
  };
}

export function small(b: Bench): Promise<Record<string, LatRuns>> {
  return latencyOverPaths(b, { job: 'small', count: b.scale.small }, true);
}

export interface SetupResult {
  paths: Record<string, LatRuns>;
  /**
   * The connections through a proxy (kubetunnel, node relay): the TLS handshake
   * with the proxy, then its answer to CONNECT (kubetunnel: authentication,
   * OPEN through the tunnel, the agent's dial; the relay: its own TLS
   * handshake with the back process).
   */
  phases: Record<string, { proxyTls: LatRuns; connect: LatRuns }>;
}

/**
 * New connections. The node relay runs here for its first phase: a TLS
 * handshake with a bare Node TLS server is the floor of kubetunnel's first
 * phase (its whole time is no floor: it opens a TLS connection per client).
 */
export async function setup(b: Bench): Promise<SetupResult> {
  const phases: Record<string, { proxyTls: Lat[]; connect: Lat[] }> = {};
  const result = await latencyOverPaths<Lat & { phases?: { proxyTls: Lat; connect: Lat } }>(b, { job: 'setup', count: b.scale.setup }, true, (name, r) => {
    if (!r.phases) return '';
    const p = (phases[name] ??= { proxyTls: [], connect: [] });
    p.proxyTls.push(r.phases.proxyTls);
    p.connect.push(r.phases.connect);
    return `; of which TLS with the proxy p50 ${ms(r.phases.proxyTls.p50)}, CONNECT answered p50 ${ms(r.phases.connect.p50)}`;
  });
  return {
    paths: result,
    phases: Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, { proxyTls: latRuns(v.proxyTls), connect: latRuns(v.connect) }])),
  };
}

export interface FairnessResult {
  sameTunnel: LatRuns;
  otherTunnel: LatRuns;
  /** The bulk download's speed beside the probes, MB/s. */
  bulkMBps: { sameTunnel: Summary; otherTunnel: Summary };
}

/**
 * Small requests on one connection while a full-speed download runs through
 * the same tunnel (same agent, same ssh connection), vs through another one
 * (another cluster's agent, a second ssh connection): same CPU load.
 */
export async function fairness(b: Bench): Promise<Record<string, FairnessResult>> {
  const cases: Array<[string, Route, Route, Route]> = [['kubetunnel', b.server.route('c1'), b.server.route('c1'), b.server.route('c2')]];
  if (b.ssh) {
    const [p0, p1] = b.ssh.ports;
    cases.push(['ssh -R', { kind: 'ssh', port: p0! }, { kind: 'ssh', port: p0! }, { kind: 'ssh', port: p1! }]);
  }
  const out: Record<string, FairnessResult> = {};
  for (const [name, probe, same, other] of cases) {
    const runs = { sameTunnel: [] as Array<Lat & { bulkMBps: number }>, otherTunnel: [] as Array<Lat & { bulkMBps: number }> };
    for (let i = 0; i < b.scale.runs; i++) {
      for (const [which, bulkRoute] of [['sameTunnel', same], ['otherTunnel', other]] as const) {
        const r = await client<Lat & { bulkMBps: number }>({ ...base(b), job: 'probe', route: probe, bulkRoute, count: b.scale.probe });
        runs[which].push(r);
        progress(`  run ${i + 1}/${b.scale.runs} ${name}, bulk on ${which === 'sameTunnel' ? 'the same' : 'another'} tunnel (${r.bulkMBps.toFixed(0)} MB/s): ${showLat(r)}`);
      }
    }
    out[name] = {
      sameTunnel: latRuns(runs.sameTunnel),
      otherTunnel: latRuns(runs.otherTunnel),
      bulkMBps: { sameTunnel: summary(runs.sameTunnel.map((r) => r.bulkMBps)), otherTunnel: summary(runs.otherTunnel.map((r) => r.bulkMBps)) },
    };
  }
  return out;
}

export interface SlowReaderResult {
  readerMBps: number;
  /** Small requests on another stream of the same tunnel, without and beside the slow reader. */
  alone: Lat;
  beside: Lat;
  /** Peak RSS of each process during the small requests alone, and beside the slow reader. */
  rss: { server: { alone: number; beside: number }; agent: { alone: number; beside: number } };
  /** What the slow reader added: peak beside it minus peak without it. */
  growth: { server: number; agent: number };
  /** The target: server and agent memory within 2 × the initial stream window. */
  limit: number;
}

/**
 * Small GETs through c1 alone for as long as the slow read will take, then
 * the same beside a reader taking a fast 1 GiB download through c1 at
 * `slowRate`; the server's and the agent's RSS sampled all along.
 */
export async function slowReader(b: Bench): Promise<SlowReaderResult> {
  const route = b.server.route('c1');
  const { proc, result } = startClient<Pick<SlowReaderResult, 'readerMBps' | 'alone' | 'beside'>>({
    ...base(b), job: 'slow', route, bulkRoute: route, bytes: b.scale.slowBytes, rate: b.scale.slowRate,
  });
  const pids = { server: b.server.proc.pid!, agent: b.agentC1.pid! };
  const rss = { server: { alone: 0, beside: 0 }, agent: { alone: 0, beside: 0 } };
  let phase = 'alone' as 'alone' | 'beside';
  const sample = () => {
    for (const k of ['server', 'agent'] as const) rss[k][phase] = Math.max(rss[k][phase], rssOf(pids[k]));
  };
  sample();
  const timer = setInterval(sample, 100);
  proc.stdout!.on('data', (d: Buffer) => {
    if (phase === 'alone' && d.toString().includes('"phase":"beside"')) {
      sample();
      phase = 'beside';
      progress('  small GETs alone done; the slow reader starts');
    }
  });
  try {
    const r = await result;
    sample();
    if (phase !== 'beside') throw new Error('slow reader: the client never started its reader');
    const growth = { server: rss.server.beside - rss.server.alone, agent: rss.agent.beside - rss.agent.alone };
    progress(`  reader ${r.readerMBps.toFixed(2)} MB/s; small GETs alone ${showLat(r.alone)}, beside ${showLat(r.beside)}`);
    progress(`  peak RSS, alone -> beside the slow reader: server ${MiB(rss.server.alone)} -> ${MiB(rss.server.beside)}, agent ${MiB(rss.agent.alone)} -> ${MiB(rss.agent.beside)}`);
    return { ...r, rss, growth, limit: 2 * Defaults.initialWindow };
  } finally {
    clearInterval(timer);
  }
}

export interface ManyAgentsResult {
  agents: number;
  processes: number;
  registeredInMs: number;
  serverRss: { before: number; after: number };
}

/** `scale.agents` agent sessions (one cluster, like a DaemonSet), in a few processes. */
export async function manyAgents(b: Bench): Promise<ManyAgentsResult> {
  const { agents, agentProcesses } = b.scale;
  const before = rssOf(b.server.proc.pid!);
  const t0 = performance.now();
  const per = Math.ceil(agents / agentProcesses);
  const counts = Array.from({ length: agentProcesses }, (_, i) => Math.max(0, Math.min(per, agents - i * per)));
  const pools = await Promise.all(counts.map((n, i) => startAgentPool(b.pki, b.server, b.upstreamPort, ['many'], n, `p${i}-`)));
  await b.server.waitAgents((m) => (m.get('many') ?? 0) >= agents);
  const registeredInMs = Math.round(performance.now() - t0);
  const after = rssOf(b.server.proc.pid!);
  progress(`  ${agents} registered in ${(registeredInMs / 1000).toFixed(1)} s; server RSS ${MiB(before)} -> ${MiB(after)}`);
  await Promise.all(pools.map(endInput));
  return { agents, processes: agentProcesses, registeredInMs, serverRss: { before, after } };
}

export interface ManyStreamsResult {
  streams: number;
  clusters: number;
  open: number;
  failed: number;
  openedInMs: number;
  serverRss: { before: number; after: number };
  bytesPerStream: number;
  agentPoolRss: number;
}

/** `scale.streams` CONNECT streams held open at once, spread over `scale.streamClusters` clusters. */
export async function manyStreams(b: Bench): Promise<ManyStreamsResult> {
  const pool = await startAgentPool(b.pki, b.server, b.upstreamPort, b.clusters.slice(2), 1, 'ms-');
  try {
    const before = rssOf(b.server.proc.pid!);
    const t0 = performance.now();
    const { proc, ready } = await clientHolding<{ open: number; failed: number }>({
      ...base(b), job: 'hold', route: b.server.route('c1'), clusters: b.clusters, count: b.scale.streams,
    });
    const openedInMs = Math.round(performance.now() - t0);
    const after = rssOf(b.server.proc.pid!);
    const agentPoolRss = rssOf(pool.pid!);
    progress(`  ${ready.open} open, ${ready.failed} failed in ${(openedInMs / 1000).toFixed(1)} s; server RSS ${MiB(before)} -> ${MiB(after)}`);
    await endInput(proc);
    return {
      streams: b.scale.streams,
      clusters: b.scale.streamClusters,
      open: ready.open,
      failed: ready.failed,
      openedInMs,
      serverRss: { before, after },
      bytesPerStream: Math.round((after - before) / Math.max(1, ready.open)),
      agentPoolRss,
    };
  } finally {
    await endInput(pool);
  }
}
