/**
 * Watch fan-out (issue 14): one controller process (bench/src/watchclient.ts)
 * holding `watchesPerCluster` watches on each of `watchClusters` clusters
 * through the hub's L7 frontend, over HTTP/1.1 and over HTTP/2, while the
 * clusters' apiservers create `watchRate` events a second in total.
 *
 *   controller --(h1: a TLS connection per watch; h2: one per cluster)--> hub, L7
 *     --> tunnel of the cluster's agent (agent pool processes, bench/src/agents.ts)
 *     --> the cluster's stand-in apiserver (all in one process, bench/src/standins.ts)
 *
 * Each event is a namespace created in one cluster and labelled for one of
 * its watches, so each watch receives watchRate / (clusters × watches)
 * events a second, evenly spaced; the rate is of events created, and so
 * delivered (the run fails unless every one arrives once, on its watch).
 * Latency: arrival at the controller minus the creation time the stand-in
 * wrote in the namespace (wall clock, µs precision, same machine). The
 * measured events follow WARMUP_S of the same events, checked the same way
 * and reported apart.
 *
 * Each mode gets a fresh hub (its RSS and CPU are the mode's own) and fresh
 * agents; the stand-ins serve every mode. A first mode, direct, runs the
 * same watches and events over HTTP/1.1 to the apiservers themselves: the
 * latency this shared machine gives without the hub. Connections held at the hub are the
 * hub's own gauge kubetunnel_connections{listener="proxy",state="open"} and
 * the established sockets `ss` sees on its L7 port.
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { agentTokenFile, AGENT_APISERVER_TOKEN, endInput, ROOT, startServer, type Server } from './parties.js';
import { cpuOf, line, loadavg, machineCpu, peakOf, progress, rssOf, start, startAgentPools, stop, within } from './procs.js';
import type { Bench } from './scenarios.js';

const DIST = path.join(ROOT, 'bench/dist');
/** Agent pool processes (200 agents, with their L7 streams and apiserver connections, in two processes). */
const POOLS = 2;
/** Watches the controller opens at once (below the hub's 1,024 pending connections). */
const OPENING = 200;
/** Time for the last establishments' work to settle before events begin, then the time the idle CPU is measured over (at most the events' time). */
const SETTLE_MS = 1000;
const IDLE_MS = 3000;
/**
 * Seconds of events at the same rate on the same watches before the
 * measured ones, reported apart: the first seconds of a fresh hub's and
 * agents' event path (code not yet optimised, every party starting it at
 * once on a shared machine) carry a tail that a hub in service has left
 * behind (docs/benchmarks.md).
 */
const WARMUP_S = 5;

/** direct: HTTP/1.1 to the apiservers themselves, no hub (what the machine gives); the others through the hub. */
export type WatchModeName = 'direct' | 'HTTP/1.1' | 'HTTP/2';

export interface WatchMode {
  watches: number;
  /** Connections the controller opened (h1: sockets of its agent; h2: sessions). */
  clientConnections: number;
  /** At the hub (not direct), with every watch open: its gauge of open L7 frontend connections, the sockets ss sees on that port, its open tunnel streams. */
  hub?: { connections: number; sockets: number; tunnelStreams: number; rssEstablished: number; rssEnd: number; rssPeak: number };
  /** TLS connections open to the member apiservers with every watch open (the agents', or the controller's when direct; not in results before 2026-12-03 11:00). */
  memberConnections?: number;
  /** From the first watch request to the last watch's 200, ms (OPENING at once). */
  establishMs: number;
  /** CPU seconds used while the watches were being established (NaN: direct). */
  establishCpu: { hub: number; agents: number };
  events: {
    created: number;
    delivered: number;
    seconds: number;
    /** Events created (and so delivered) per second. */
    rate: number;
    /** How far behind its schedule the generator fell at worst, ms. */
    generatorMaxLateMs: number;
    latencyMs: Latency;
    /** p50 / p99 of the events created in each 5 s of the run, in order: a backlog shows as a rise. */
    byWindowMs: Windows;
  };
  /** Wake-ups of a process with nothing else to do that came 5 ms or more late while these events were created (stallprobe.ts): how many, the longest, and the longest in each 5 s (0: none); not in results before 2026-12-03 14:00. */
  machineDelays?: { count: number; longestMs: number; byWindowMs: number[] };
  /** The warm-up (WARMUP_S) before them: its events, checked as the others are, and their latency. */
  warmup: { seconds: number; events: number; latencyMs: Latency; byWindowMs: Windows };
  /** Share of one core each party used while events flowed (NaN: direct), and every process of the machine together (the bench's and others'). */
  cpuShare: { hub: number; agents: number; apiservers: number; controller: number; machine: number };
  /** Share of one core each party used over IDLE_MS just before, every watch open and no events. */
  idleCpuShare: { hub: number; agents: number; apiservers: number; controller: number };
  loadavg: string;
}

export interface WatchResult {
  clusters: number;
  watchesPerCluster: number;
  /** Events a second, in total over every watch. */
  rate: number;
  seconds: number;
  opening: number;
  modes: Record<WatchModeName, WatchMode>;
}

type Latency = { p50: number; p90: number; p99: number; p999: number; max: number; n: number };
type Windows = Array<{ p50: number; p99: number }>;

interface Established {
  watches: number;
  established: number;
  establishMs: number;
  failures: string[];
  alpn?: string;
  clientConnections: number;
}

interface Delivered {
  /** Wall-clock creation time of the first event, where the windows of byWindowMs begin, and their length. */
  firstCreatedMs: number;
  windowMs: number;
  expected: number;
  received: number;
  repeated: number;
  misrouted: number;
  unreadable: number;
  ended: number;
  latencyMs: Latency;
  byWindowMs: Windows;
}

/** Throws unless every event of `got` arrived once, on its watch. */
function checkDelivered(mode: string, got: Delivered): void {
  const wrong = { missing: got.expected - got.received, repeated: got.repeated, misrouted: got.misrouted, unreadable: got.unreadable, 'ended early': got.ended };
  const bad = Object.entries(wrong).filter(([, n]) => n !== 0);
  if (bad.length > 0) throw new Error(`${mode}: of ${got.expected} events, ${bad.map(([k, n]) => `${n} ${k}`).join(', ')}`);
}

interface Generated {
  emitted: number;
  seconds: number;
  rate: number;
  maxLateMs: number;
}

/** The hub's open L7 frontend connections and tunnel streams, from its own metrics. */
async function hubGauges(server: Server): Promise<{ connections: number; tunnelStreams: number }> {
  const text = await (await fetch(`http://127.0.0.1:${server.ports.admin}/metrics`)).text();
  const values = (re: RegExp) => [...text.matchAll(re)].reduce((n, m) => n + Number(m[1]), 0);
  return {
    connections: values(/^kubetunnel_connections\{listener="proxy",state="open"\} (\d+)$/gm),
    tunnelStreams: values(/^kubetunnel_open_streams\{[^}]*\} (\d+)$/gm),
  };
}

/** Established TCP sockets whose local port is `port` (the hub's side of its L7 connections). */
function socketsOn(port: number): number {
  return execFileSync('ss', ['-Htn', 'state', 'established', `( sport = :${port} )`], { encoding: 'utf8' }).split('\n').filter(Boolean).length;
}

const send = (proc: ChildProcess, o: object) => proc.stdin!.write(`${JSON.stringify(o)}\n`);
const windows = (w: Windows) => w.map((x) => `${x.p50.toFixed(1)} / ${x.p99.toFixed(1)}`).join(', ');

/** What a mode runs against: the hub and its agent pools, or (direct) nothing but the apiservers. */
interface Path {
  server?: Server;
  pools: ChildProcess[];
  controller?: ChildProcess;
}

/** A fresh hub with an agent per cluster (in POOLS processes), every agent registered. */
async function startHub(b: Bench, mode: string, apiservers: Record<string, string>, into: Path): Promise<Server> {
  const clusters = b.watchClusters;
  const server = await startServer(b.pki, b.tmp, ['--workers', '1']);
  into.server = server;
  const started = startAgentPools(path.join(DIST, 'agents.js'), clusters.length, POOLS, (n, i, first) => ({
    server: `wss://localhost:${server.ports.agent}`,
    certDir: b.pki.dir,
    clusters: clusters.slice(first, first + n),
    perCluster: 1,
    apiserver: apiservers[clusters[0]!],
    apiservers,
    apiserverTokenFile: agentTokenFile(b.pki),
    idPrefix: `${mode}-p${i}-`,
  }));
  into.pools = started.pools;
  await within(120_000, 'agent pools', started.ready);
  await within(60_000, 'agents registering', server.waitAgents((m) => clusters.every((c) => m.get(c) === 1)));
  return server;
}

async function runMode(
  b: Bench,
  mode: 'h1' | 'h2' | 'direct',
  standins: ChildProcess,
  probe: ChildProcess,
  ports: Record<string, number>,
): Promise<WatchMode> {
  const { scale } = b;
  const clusters = b.watchClusters;
  const apiservers = Object.fromEntries(Object.entries(ports).map(([c, port]) => [c, `https://127.0.0.1:${port}`]));
  const p: Path = { pools: [] };
  try {
    const server = mode === 'direct' ? undefined : await startHub(b, mode, apiservers, p);
    const hub = server?.proc.pid;
    const cpu = (pid: number | undefined) => (pid === undefined ? NaN : cpuOf(pid));
    const agentsCpu = () => (server ? p.pools.reduce((n, x) => n + cpuOf(x.pid!), 0) : NaN);
    const cpu0 = { hub: cpu(hub), agents: agentsCpu() };
    const controller = start(path.join(DIST, 'watchclient.js'), [
      JSON.stringify({
        mode, port: server?.ports.proxy ?? 0, apiservers: ports, ca: b.pki.ca, token: server?.token ?? AGENT_APISERVER_TOKEN,
        clusters, watches: scale.watchesPerCluster, run: mode, concurrency: OPENING,
      }),
    ], { stdin: true });
    p.controller = controller;
    const delivered = line<Delivered>(controller, (o) => o.phase === undefined, `watch controller (${mode})`);
    delivered.catch(() => undefined); // awaited below, unless establishing fails first
    const est = await line<Established>(controller, (o) => o.phase === 'established', `watch controller (${mode})`);
    const establishCpu = { hub: cpu(hub) - cpu0.hub, agents: agentsCpu() - cpu0.agents };
    if (est.established < est.watches) {
      throw new Error(`${mode}: ${est.watches - est.established} of ${est.watches} watches could not be established: ${est.failures.join('; ')}`);
    }
    let atHub: WatchMode['hub'];
    if (server) {
      const gauges = await hubGauges(server);
      const sockets = socketsOn(server.ports.proxy);
      atHub = { ...gauges, sockets, rssEstablished: rssOf(hub!), rssEnd: NaN, rssPeak: NaN };
      // Counts, not timings: HTTP/1.1 holds a connection per watch, HTTP/2 one per cluster, and each watch is a tunnel stream.
      const want = mode === 'h2' ? clusters.length : est.watches;
      if (gauges.connections !== want || gauges.tunnelStreams !== est.watches) {
        throw new Error(`${mode}: the hub holds ${gauges.connections} L7 connections and ${gauges.tunnelStreams} tunnel streams for ${est.watches} watches on ${clusters.length} clusters (ALPN ${est.alpn ?? 'http/1.1'})`);
      }
    }
    send(standins, { connections: true });
    const { connections: memberConnections } = await line<{ connections: number }>(standins, (o) => typeof o.connections === 'number', 'stand-in apiservers');
    progress(
      `  ${mode}: ${est.established} watches in ${(est.establishMs / 1000).toFixed(2)} s; controller ${est.clientConnections} connections` +
        (atHub ? `; at the hub ${atHub.connections} L7 connections (ss: ${atHub.sockets}), ${atHub.tunnelStreams} tunnel streams` : '') +
        `; at the apiservers ${memberConnections} connections`,
    );

    // Each party's CPU seconds so far (and the whole machine's), and its share of a core since an earlier reading.
    const cpuNow = () => ({ hub: cpu(hub), agents: agentsCpu(), apiservers: cpuOf(standins.pid!), controller: cpuOf(controller.pid!), machine: machineCpu(), t: performance.now() });
    const sharesSince = (a: ReturnType<typeof cpuNow>) => {
      const b = cpuNow();
      const wall = (b.t - a.t) / 1000;
      return { hub: (b.hub - a.hub) / wall, agents: (b.agents - a.agents) / wall, apiservers: (b.apiservers - a.apiservers) / wall, controller: (b.controller - a.controller) / wall, machine: (b.machine - a.machine) / wall };
    };

    // The warm-up: the same events for WARMUP_S, every one checked, their latency reported apart.
    const warmSeconds = Math.min(WARMUP_S, scale.watchSeconds);
    send(standins, { events: { rate: scale.watchRate, seconds: warmSeconds, watches: scale.watchesPerCluster, run: mode } });
    const warmGen = await line<Generated>(standins, (o) => typeof o.emitted === 'number', 'event generator');
    const warmed = line<Delivered>(controller, (o) => o.phase === 'warmed', `watch controller (${mode})`);
    send(controller, { expect: warmGen.emitted, timeoutMs: 15_000, warmup: true });
    const warm = await warmed;
    checkDelivered(`${mode} warm-up`, warm);
    progress(`  ${mode}: warm-up, ${warm.received} events in ${warmSeconds} s: p50 / p99 ms of each 5 s: ${windows(warm.byWindowMs)}`);

    // Settle, then the CPU each party uses with every watch open and no events (the tunnels' pings, idle connections).
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const idle0 = cpuNow();
    await new Promise((r) => setTimeout(r, Math.min(IDLE_MS, scale.watchSeconds * 1000)));
    const { machine: _, ...idleShare } = sharesSince(idle0);
    const avg = loadavg();
    const before = cpuNow();
    send(standins, { events: { rate: scale.watchRate, seconds: scale.watchSeconds, watches: scale.watchesPerCluster, run: mode } });
    const gen = await line<Generated>(standins, (o) => typeof o.emitted === 'number', 'event generator');
    const cpuShare = sharesSince(before);
    send(controller, { expect: gen.emitted, timeoutMs: 15_000 });
    const got = await delivered;
    checkDelivered(mode, got);
    const l = got.latencyMs;
    progress(`  ${mode}: p50 / p99 ms of each 5 s: ${windows(got.byWindowMs)}`);
    const machineDelays = await delaysOf(probe, got, gen.seconds);
    progress(
      `  ${mode}: an idle process woke 5 ms or more late ${machineDelays.count} times; the longest delay of each 5 s, ms: ${machineDelays.byWindowMs.map((x) => x.toFixed(1)).join(', ')}`,
    );
    const pct = (x: number) => (Number.isFinite(x) ? `${(x * 100).toFixed(0)}%` : '–');
    const perEvent = (k: keyof typeof idleShare) => (Number.isFinite(cpuShare[k]) ? `${(((cpuShare[k] - idleShare[k]) / gen.rate) * 1e6).toFixed(0)} µs` : '–');
    progress(`  ${mode}: CPU per event above idle: hub ${perEvent('hub')}, agents ${perEvent('agents')}, apiservers ${perEvent('apiservers')}, controller ${perEvent('controller')}`);
    progress(
      `  ${mode}: ${got.received} events at ${gen.rate.toFixed(0)}/s: latency p50 ${l.p50.toFixed(2)} ms, p99 ${l.p99.toFixed(2)} ms, max ${l.max.toFixed(1)} ms; ` +
        `CPU hub ${pct(cpuShare.hub)}, agents ${pct(cpuShare.agents)}, apiservers ${pct(cpuShare.apiservers)}, controller ${pct(cpuShare.controller)}, the whole machine ${pct(cpuShare.machine)}; load ${avg}`,
    );
    if (atHub) Object.assign(atHub, { rssEnd: rssOf(hub!), rssPeak: peakOf(hub!) });
    return {
      watches: est.established,
      clientConnections: est.clientConnections,
      memberConnections,
      ...(atHub ? { hub: atHub } : {}),
      establishMs: est.establishMs,
      establishCpu,
      events: { created: gen.emitted, delivered: got.received, seconds: gen.seconds, rate: gen.rate, generatorMaxLateMs: gen.maxLateMs, latencyMs: l, byWindowMs: got.byWindowMs },
      machineDelays,
      warmup: { seconds: warmSeconds, events: warm.received, latencyMs: warm.latencyMs, byWindowMs: warm.byWindowMs },
      cpuShare,
      idleCpuShare: idleShare,
      loadavg: avg,
    };
  } finally {
    if (p.controller) await stop(p.controller); // it has exited after its result, unless the mode failed
    await Promise.all(p.pools.map(endInput));
    if (p.server) await stop(p.server.proc);
  }
}

/** The delays the stall probe saw in the `seconds` of events the controller reported on (`got`), by the controller's windows. */
async function delaysOf(probe: ChildProcess, got: Delivered, seconds: number): Promise<NonNullable<WatchMode['machineDelays']>> {
  const { firstCreatedMs: from, windowMs } = got;
  const answer = line<{ stalls: Array<[number, number]> }>(probe, (o) => Array.isArray(o.stalls), 'stall probe');
  send(probe, { from, to: from + seconds * 1000 });
  const { stalls } = await answer;
  const byWindowMs = Array.from({ length: Math.ceil((seconds * 1000) / windowMs) }, () => 0);
  for (const [at, ms] of stalls) {
    const w = Math.floor((at - from) / windowMs);
    byWindowMs[w] = Math.max(byWindowMs[w] ?? 0, ms);
  }
  return { count: stalls.length, longestMs: Math.max(0, ...byWindowMs), byWindowMs };
}

export async function watch(b: Bench): Promise<WatchResult> {
  const { scale } = b;
  const probe = start(path.join(DIST, 'stallprobe.js'), [], { stdin: true });
  const probeReady = line(probe, (o) => o.ready === true, 'stall probe');
  probeReady.catch(() => undefined); // awaited below, unless the stand-ins fail first
  const standins = start(path.join(DIST, 'standins.js'), [JSON.stringify({ certDir: b.pki.dir, clusters: b.watchClusters, token: AGENT_APISERVER_TOKEN, http2: b.memberProtocols === 'h2' })], { stdin: true });
  try {
    const { ports } = await line<{ ports: Record<string, number> }>(standins, (o) => typeof o.ports === 'object', 'stand-in apiservers');
    await probeReady;
    const modes: WatchResult['modes'] = {
      direct: await runMode(b, 'direct', standins, probe, ports),
      'HTTP/1.1': await runMode(b, 'h1', standins, probe, ports),
      'HTTP/2': await runMode(b, 'h2', standins, probe, ports),
    };
    return { clusters: b.watchClusters.length, watchesPerCluster: scale.watchesPerCluster, rate: scale.watchRate, seconds: scale.watchSeconds, opening: OPENING, modes };
  } finally {
    await Promise.all([endInput(standins), endInput(probe)]);
  }
}
