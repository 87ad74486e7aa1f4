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
 * wrote in the namespace (wall clock, µs precision, same machine).
 *
 * Each mode gets a fresh hub (its RSS and CPU are the mode's own) and fresh
 * agents; the stand-ins serve both. Connections held at the hub are the
 * hub's own gauge kubetunnel_connections{listener="proxy",state="open"} and
 * the established sockets `ss` sees on its L7 port.
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { agentTokenFile, AGENT_APISERVER_TOKEN, endInput, ROOT, startServer, type Server } from './parties.js';
import { cpuOf, line, loadavg, peakOf, progress, rssOf, start, startAgentPools, stop, within } from './procs.js';
import type { Bench } from './scenarios.js';

const DIST = path.join(ROOT, 'bench/dist');
/** Agent pool processes (200 agents, with their L7 streams and apiserver connections, in two processes). */
const POOLS = 2;
/** Watches the controller opens at once (below the hub's 1,024 pending connections). */
const OPENING = 200;
/** Time for the last establishments' work to settle before events begin. */
const SETTLE_MS = 1000;

export type WatchModeName = 'HTTP/1.1' | 'HTTP/2';

export interface WatchMode {
  watches: number;
  /** Connections the controller opened (h1: sockets of its agent; h2: sessions). */
  clientConnections: number;
  /** At the hub, with every watch open: its gauge of open L7 frontend connections, the sockets ss sees on that port, its open tunnel streams. */
  hub: { connections: number; sockets: number; tunnelStreams: number; rssEstablished: number; rssEnd: number; rssPeak: number };
  /** From the first watch request to the last watch's 200, ms (OPENING at once). */
  establishMs: number;
  /** CPU seconds used while the watches were being established. */
  establishCpu: { hub: number; agents: number };
  events: {
    created: number;
    delivered: number;
    seconds: number;
    /** Events created (and so delivered) per second. */
    rate: number;
    /** How far behind its schedule the generator fell at worst, ms. */
    generatorMaxLateMs: number;
    latencyMs: { p50: number; p90: number; p99: number; p999: number; max: number; n: number };
  };
  /** Share of one core each party used while events flowed. */
  cpuShare: { hub: number; agents: number; apiservers: number; controller: number };
  loadavg: string;
}

export interface WatchResult {
  clusters: number;
  watchesPerCluster: number;
  /** Events a second, in total over every watch. */
  rate: number;
  seconds: number;
  opening: number;
  modes: Partial<Record<WatchModeName, WatchMode | { unavailable: string }>>;
}

interface Established {
  watches: number;
  established: number;
  establishMs: number;
  failures: string[];
  alpn?: string;
  clientConnections: number;
}

interface Delivered {
  expected: number;
  received: number;
  repeated: number;
  misrouted: number;
  unreadable: number;
  ended: number;
  latencyMs: WatchMode['events']['latencyMs'];
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

async function runMode(
  b: Bench,
  mode: 'h1' | 'h2',
  standins: ChildProcess,
  apiservers: Record<string, string>,
): Promise<WatchMode | { unavailable: string }> {
  const { scale } = b;
  const clusters = b.watchClusters;
  const server = await startServer(b.pki, b.tmp, ['--workers', '1']);
  let pools: ChildProcess[] = [];
  try {
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
    pools = started.pools;
    await within(120_000, 'agent pools', started.ready);
    await within(60_000, 'agents registering', server.waitAgents((m) => clusters.every((c) => m.get(c) === 1)));

    const hub = server.proc.pid!;
    const agentsCpu = () => pools.reduce((n, p) => n + cpuOf(p.pid!), 0);
    const cpu0 = { hub: cpuOf(hub), agents: agentsCpu() };
    const controller = start(path.join(DIST, 'watchclient.js'), [
      JSON.stringify({ mode, port: server.ports.proxy, ca: b.pki.ca, token: server.token, clusters, watches: scale.watchesPerCluster, run: mode, concurrency: OPENING }),
    ], { stdin: true });
    const delivered = line<Delivered>(controller, (o) => o.phase === undefined, `watch controller (${mode})`);
    delivered.catch(() => undefined); // awaited below, unless establishing fails first
    const est = await line<Established>(controller, (o) => o.phase === 'established', `watch controller (${mode})`);
    const establishCpu = { hub: cpuOf(hub) - cpu0.hub, agents: agentsCpu() - cpu0.agents };
    if (mode === 'h2' && est.alpn !== 'h2') {
      await stop(controller);
      return { unavailable: `the hub's L7 frontend negotiated ${est.alpn ?? 'nothing'} (ALPN), not h2: ${est.failures[0] ?? ''}` };
    }
    if (est.established < est.watches) {
      throw new Error(`${est.watches - est.established} of ${est.watches} watches could not be established: ${est.failures.join('; ')}`);
    }
    const gauges = await hubGauges(server);
    const sockets = socketsOn(server.ports.proxy);
    const rssEstablished = rssOf(hub);
    progress(
      `  ${mode}: ${est.established} watches in ${(est.establishMs / 1000).toFixed(2)} s; at the hub ${gauges.connections} L7 connections (ss: ${sockets}), ${gauges.tunnelStreams} tunnel streams; controller ${est.clientConnections} connections`,
    );

    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const avg = loadavg();
    const parties = { hub, standins: standins.pid!, controller: controller.pid! };
    const before = { hub: cpuOf(parties.hub), agents: agentsCpu(), apiservers: cpuOf(parties.standins), controller: cpuOf(parties.controller), t: performance.now() };
    send(standins, { events: { rate: scale.watchRate, seconds: scale.watchSeconds, watches: scale.watchesPerCluster, run: mode } });
    const gen = await line<{ emitted: number; seconds: number; rate: number; maxLateMs: number }>(standins, (o) => typeof o.emitted === 'number', 'event generator');
    const wall = (performance.now() - before.t) / 1000;
    const cpuShare = {
      hub: (cpuOf(parties.hub) - before.hub) / wall,
      agents: (agentsCpu() - before.agents) / wall,
      apiservers: (cpuOf(parties.standins) - before.apiservers) / wall,
      controller: (cpuOf(parties.controller) - before.controller) / wall,
    };
    send(controller, { expect: gen.emitted, timeoutMs: 15_000 });
    const got = await delivered;
    const wrong = { missing: got.expected - got.received, repeated: got.repeated, misrouted: got.misrouted, unreadable: got.unreadable, 'ended early': got.ended };
    const bad = Object.entries(wrong).filter(([, n]) => n !== 0);
    if (bad.length > 0) throw new Error(`${mode}: of ${got.expected} events, ${bad.map(([k, n]) => `${n} ${k}`).join(', ')}`);
    const l = got.latencyMs;
    progress(
      `  ${mode}: ${got.received} events at ${gen.rate.toFixed(0)}/s: latency p50 ${l.p50.toFixed(2)} ms, p99 ${l.p99.toFixed(2)} ms, max ${l.max.toFixed(1)} ms; ` +
        `CPU hub ${(cpuShare.hub * 100).toFixed(0)}%, agents ${(cpuShare.agents * 100).toFixed(0)}%, apiservers ${(cpuShare.apiservers * 100).toFixed(0)}%, controller ${(cpuShare.controller * 100).toFixed(0)}%`,
    );
    return {
      watches: est.established,
      clientConnections: est.clientConnections,
      hub: { ...gauges, sockets, rssEstablished, rssEnd: rssOf(hub), rssPeak: peakOf(hub) },
      establishMs: est.establishMs,
      establishCpu,
      events: { created: gen.emitted, delivered: got.received, seconds: gen.seconds, rate: gen.rate, generatorMaxLateMs: gen.maxLateMs, latencyMs: l },
      cpuShare,
      loadavg: avg,
    };
  } finally {
    await Promise.all(pools.map(endInput));
    await stop(server.proc);
  }
}

export async function watch(b: Bench): Promise<WatchResult> {
  const { scale } = b;
  const standins = start(path.join(DIST, 'standins.js'), [JSON.stringify({ certDir: b.pki.dir, clusters: b.watchClusters, token: AGENT_APISERVER_TOKEN })], { stdin: true });
  try {
    const { ports } = await line<{ ports: Record<string, number> }>(standins, (o) => typeof o.ports === 'object', 'stand-in apiservers');
    const apiservers = Object.fromEntries(Object.entries(ports).map(([c, port]) => [c, `https://127.0.0.1:${port}`]));
    const modes: WatchResult['modes'] = {};
    modes['HTTP/1.1'] = await runMode(b, 'h1', standins, apiservers);
    modes['HTTP/2'] = await runMode(b, 'h2', standins, apiservers);
    const h2 = modes['HTTP/2'];
    if ('unavailable' in h2) progress(`  HTTP/2 left out: ${h2.unavailable}`);
    return { clusters: b.watchClusters.length, watchesPerCluster: scale.watchesPerCluster, rate: scale.watchRate, seconds: scale.watchSeconds, opening: OPENING, modes };
  } finally {
    await endInput(standins);
  }
}
