/**
 * The L7 scenarios (issue 14): the same HTTP requests, keep-alive HTTP/1.1
 * over TLS (bench/src/l7client.ts), over three paths:
 *
 *   direct          client -> upstream
 *   kubetunnel L7   client -> server frontend (/clusters/c1/..., bearer token) -> tunnel -> agent c1 -> upstream
 *   nginx chain     client -> nginx "hub" -> nginx "agent" -> upstream (bench/src/nginx.ts), TLS on every hop
 *   node chain      client -> node "hub" -> node "agent" -> upstream (bench/src/l7relay.ts), the same in Node.js
 *
 * small: one client, sequential GET /version; load: `l7Clients` clients at
 * once for `l7Seconds`, requests/s, latency and the hub's and agent's CPU
 * per 1,000 requests; list: a LIST of about `l7ListBytes`, its time and the
 * hub's and agent's peak RSS.
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { latRuns, type Lat, type LatRuns, type Summary } from './common.js';
import type { L7Target } from './l7client.js';
import { nginxAvailable, startNginxChain, type NginxChain } from './nginx.js';
import { ROOT, startNodeL7Chain } from './parties.js';
import { cpuOf, line, loadavg, peakOf, progress, rssOf, start, stop } from './procs.js';
import type { Bench } from './scenarios.js';

const CLIENT = path.join(ROOT, 'bench/dist/l7client.js');

export interface L7Load extends Lat {
  requests: number;
  seconds: number;
  rps: number;
  /** CPU seconds the hub and the agent used per 1,000 requests. */
  cpuPer1000: { hub: number; agent: number };
  /** Share of one core each used during the run. */
  cpuShare: { hub: number; agent: number };
}

export interface L7List {
  bytes: number;
  ms: Summary;
  runs: number;
  /** Peak RSS (VmHWM, reset before the LISTs) and RSS before them, bytes. */
  hub: { before: number; peak: number };
  agent: { before: number; peak: number };
}

export interface L7Result {
  nginx: string;
  small: Record<string, LatRuns>;
  /** Per path, the run of median requests/s of `loadRounds` (its other figures are that run's). */
  load: Record<string, L7Load>;
  /** Every run of every path, in the order of the rounds: the paths took turns. */
  loadRounds: Record<string, L7Load[]>;
  list: Record<string, L7List>;
  /** The load average (1, 5, 15 min) when each part began: the machine is shared. */
  loadavg: Record<string, string>;
}


function runClient<T>(job: Record<string, unknown>, onGo?: () => void): Promise<T> {
  const proc = start(CLIENT, [JSON.stringify(job)]);
  if (onGo) void line(proc, (o) => o.phase === 'go', 'l7 client go').then(onGo, () => undefined);
  return line<T>(proc, (o) => o.phase === undefined, `l7 client ${String(job.job)}`);
}

/** Resets a process's peak RSS (VmHWM) to its current RSS; false if the kernel refused. */
function resetPeak(pid: number): boolean {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

interface Path {
  name: string;
  target: L7Target;
  /** The processes standing for hub and agent (none for direct). */
  hub?: ChildProcess;
  agent?: ChildProcess;
}

/** One run of `l7Clients` clients for `l7Seconds` through `p`, with the hub's and agent's CPU over the measured seconds. */
async function loadRun(p: Path, scale: Bench['scale']): Promise<L7Load> {
  let before = { hub: 0, agent: 0 };
  let t0 = 0;
  const cpu = () => ({ hub: p.hub ? cpuOf(p.hub.pid!) : NaN, agent: p.agent ? cpuOf(p.agent.pid!) : NaN });
  const r = await runClient<Lat & { requests: number; seconds: number; rps: number }>(
    { job: 'load', target: p.target, path: '/version', clients: scale.l7Clients, seconds: scale.l7Seconds },
    () => {
      before = cpu();
      t0 = performance.now();
    },
  );
  const after = cpu();
  const wall = (performance.now() - t0) / 1000;
  const used = { hub: after.hub - before.hub, agent: after.agent - before.agent };
  return {
    ...r,
    cpuPer1000: { hub: (1000 * used.hub) / r.requests, agent: (1000 * used.agent) / r.requests },
    cpuShare: { hub: used.hub / wall, agent: used.agent / wall },
  };
}

/** The run of median requests/s (the lower middle one of an even count). */
function medianRun(runs: L7Load[]): L7Load {
  return [...runs].sort((a, b) => a.rps - b.rps)[(runs.length - 1) >> 1]!;
}

export async function l7(b: Bench): Promise<L7Result> {
  const { scale } = b;
  let chain: NginxChain | undefined;
  if (nginxAvailable()) chain = await startNginxChain(b.pki, b.tmp, b.upstreamPort);
  else progress('  nginx unavailable: the nginx chain is left out');
  const paths: Path[] = [
    { name: 'direct', target: { port: b.upstreamPort, prefix: '', ca: b.pki.ca } },
    { name: 'kubetunnel L7', target: { port: b.server.ports.proxy, prefix: '/clusters/c1', token: b.server.token, ca: b.pki.ca }, hub: b.server.proc, agent: b.agentC1 },
  ];
  if (chain) paths.push({ name: 'nginx chain', target: { port: chain.port, prefix: '', ca: b.pki.ca }, hub: chain.hub, agent: chain.agent });
  const node = await startNodeL7Chain(b.pki, b.upstreamPort);
  paths.push({ name: 'node chain', target: { port: node.port, prefix: '', ca: b.pki.ca }, hub: node.hub, agent: node.agent });
  const avg: Record<string, string> = {};
  try {
    avg.small = loadavg();
    const smallRuns: Record<string, Lat[]> = {};
    for (let i = 0; i < scale.runs; i++) {
      for (const p of paths) {
        const r = await runClient<Lat>({ job: 'small', target: p.target, path: '/version', count: scale.l7Small });
        (smallRuns[p.name] ??= []).push(r);
        progress(`  small GETs, run ${i + 1}/${scale.runs} ${p.name}: p50 ${r.p50.toFixed(3)} ms, p99 ${r.p99.toFixed(3)} ms (${r.n})`);
      }
    }

    avg.load = loadavg();
    // Rounds of every path in turn, as for the small GETs: the machine's speed
    // drifts by more than the differences measured within a few minutes, and a
    // path's runs are spread over the same minutes as the others'.
    const loadRuns: Record<string, L7Load[]> = {};
    for (let i = 0; i < scale.runs; i++) {
      for (const p of paths) {
        const r = await loadRun(p, scale);
        (loadRuns[p.name] ??= []).push(r);
        progress(
          `  ${scale.l7Clients} clients, run ${i + 1}/${scale.runs} ${p.name}: ${r.rps.toFixed(0)} requests/s, p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms` +
            (p.hub ? `; CPU per 1,000 requests hub ${(1000 * r.cpuPer1000.hub).toFixed(0)} ms, agent ${(1000 * r.cpuPer1000.agent).toFixed(0)} ms` : ''),
        );
      }
    }
    const load = Object.fromEntries(Object.entries(loadRuns).map(([name, runs]) => [name, medianRun(runs)]));

    avg.list = loadavg();
    const list: Record<string, L7List> = {};
    for (const p of paths) {
      const procs = [p.hub, p.agent].filter((x): x is ChildProcess => x !== undefined);
      const before = procs.map((x) => rssOf(x.pid!));
      // VmHWM reset to the current RSS; where the kernel refuses, RSS sampled every 20 ms instead.
      const reset = procs.map((x) => resetPeak(x.pid!));
      const sampled = [...before];
      const timer = setInterval(() => procs.forEach((x, i) => (sampled[i] = Math.max(sampled[i]!, rssOf(x.pid!)))), 20);
      const r = await runClient<{ bytes: number; ms: Summary; runs: number }>({
        job: 'list', target: p.target, path: `/api/v1/pods?bytes=${scale.l7ListBytes}`, count: scale.l7ListRuns,
      }).finally(() => clearInterval(timer));
      const peak = procs.map((x, i) => (reset[i] ? peakOf(x.pid!) : sampled[i]!));
      list[p.name] = {
        ...r,
        hub: { before: before[0] ?? NaN, peak: peak[0] ?? NaN },
        agent: { before: before[1] ?? NaN, peak: peak[1] ?? NaN },
      };
      const mib = (x: number | undefined) => `${((x ?? NaN) / 2 ** 20).toFixed(0)} MiB`;
      progress(
        `  LIST of ${(r.bytes / 2 ** 20).toFixed(1)} MiB, ${p.name}: median ${r.ms.median.toFixed(1)} ms` +
          (p.hub ? `; peak RSS hub ${mib(before[0])} -> ${mib(peak[0])}, agent ${mib(before[1])} -> ${mib(peak[1])}` : ''),
      );
    }
    return {
      nginx: chain?.version ?? 'unavailable',
      small: Object.fromEntries(Object.entries(smallRuns).map(([k, v]) => [k, latRuns(v)])),
      load,
      loadRounds: loadRuns,
      list,
      loadavg: avg,
    };
  } finally {
    await Promise.all([stop(node.hub), stop(node.agent), ...(chain ? [stop(chain.hub), stop(chain.agent)] : [])]);
  }
}
