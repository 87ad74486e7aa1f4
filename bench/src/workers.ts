/**
 * Aggregate CONNECT throughput with 4 clusters downloading at once, through
 * `kubetunnel server --workers 1` and `--workers 2` (issue 14). Every party is
 * its own process: the stand-in upstream, one `kubetunnel agent` per cluster,
 * the server (and its workers), one load client per cluster. Rounds alternate
 * between the two settings; the median of each is reported, with the CPU each
 * party took and the machine's load.
 *
 * --worker-cores Q holds each data-path process (the server itself with
 * --workers 1, each worker with 2) to Q of a core by a CPU cgroup's quota, as
 * a CPU limit per worker would: the server, not the parties feeding it, is
 * then what limits the rounds, on a machine with fewer cores than the parties
 * need (root, and the cgroup cpu controller, v1 or v2).
 *
 *   npm run build && node bench/dist/workers.js [--rounds 3] [--mib 128] [--worker-cores 0.2]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { makeCerts, startAgent, startClient, startServer, startUpstream } from './parties.js';
import { cpuOf, progress, stop, stopAll } from './procs.js';

const CLUSTERS = ['w1', 'w2', 'w3', 'w4'];
const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};
const ROUNDS = arg('rounds', 3);
const BYTES = arg('mib', 128) * 1024 * 1024;
const WORKER_CORES = arg('worker-cores', 0);

/** The cgroup cpu controller's directory and how a quota is written there (v1: cfs files; v2: cpu.max). */
function cpuController(): { dir: string; limit: (group: string, cores: number) => void } {
  const v1 = '/sys/fs/cgroup/cpu';
  if (fs.existsSync(path.join(v1, 'cpu.cfs_quota_us'))) {
    return {
      dir: v1,
      limit: (group, cores) => {
        fs.writeFileSync(path.join(group, 'cpu.cfs_period_us'), '100000');
        fs.writeFileSync(path.join(group, 'cpu.cfs_quota_us'), String(Math.round(cores * 100_000)));
      },
    };
  }
  const v2 = '/sys/fs/cgroup';
  const enabled = path.join(v2, 'cgroup.subtree_control');
  if (fs.existsSync(enabled) && fs.readFileSync(enabled, 'utf8').split(/\s+/).includes('cpu')) {
    return { dir: v2, limit: (group, cores) => fs.writeFileSync(path.join(group, 'cpu.max'), `${Math.round(cores * 100_000)} 100000`) };
  }
  throw new Error('--worker-cores needs the cgroup cpu controller (v1 at /sys/fs/cgroup/cpu, or enabled in /sys/fs/cgroup/cgroup.subtree_control)');
}

/** The CPU cgroups made by limitCores, removed once their processes are gone (removeCgroups). */
const cgroups: string[] = [];

/** Puts each process in a CPU cgroup of its own limited to `cores` of a core. */
function limitCores(pids: number[], cores: number): void {
  const { dir, limit } = cpuController();
  for (const pid of pids) {
    const group = path.join(dir, `kubetunnel-bench-${pid}`);
    fs.mkdirSync(group);
    cgroups.push(group);
    limit(group, cores);
    fs.writeFileSync(path.join(group, 'cgroup.procs'), String(pid));
  }
}

function removeCgroups(): void {
  for (const g of cgroups.splice(0)) {
    try {
      fs.rmdirSync(g);
    } catch (err) {
      progress(`could not remove the cgroup ${g}: ${(err as Error).message}`);
    }
  }
}

/** A process and its descendants (the workers of a server), by pid. */
function family(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    try {
      const kids = fs.readFileSync(`/proc/${out[i]}/task/${out[i]}/children`, 'utf8').trim();
      if (kids) out.push(...kids.split(/\s+/).map(Number));
    } catch {
      // gone
    }
  }
  return out;
}
const cpu = (pids: number[]) => pids.reduce((s, p) => s + (Number.isFinite(safeCpu(p)) ? safeCpu(p) : 0), 0);
function safeCpu(pid: number): number {
  try {
    return cpuOf(pid);
  } catch {
    return NaN;
  }
}


interface Round {
  workers: number;
  /** All bytes of the 4 downloads over the time from the first start to the last end, MB/s. */
  aggregateMBps: number;
  perClientMBps: number[];
  /** CPU seconds per wall second (1 = one core) of each party during the downloads; the server's data-path processes among them (all of it with --workers 1, the workers with 2). */
  cores: { server: number; dataPath: number; agents: number; upstream: number; clients: number };
  loadavg: string;
}

async function round(pki: Awaited<ReturnType<typeof makeCerts>>, tmp: string, upstream: { proc: ChildProcess; port: number }, workers: number): Promise<Round> {
  const server = await startServer(pki, tmp, ['--workers', String(workers)]);
  const agents = CLUSTERS.map((c) => startAgent(pki, server, c, upstream.port));
  await server.waitAgents((m) => CLUSTERS.every((c) => (m.get(c) ?? 0) >= workers));
  const serverPids = family(server.proc.pid!);
  const dataPath = workers === 1 ? serverPids : serverPids.slice(1);
  if (WORKER_CORES > 0) limitCores(dataPath, WORKER_CORES);
  const cpuNow = () => ({ server: cpu(serverPids), dataPath: cpu(dataPath), agents: cpu(agents.map((a) => a.pid!)), upstream: cpu([upstream.proc.pid!]) });
  const before = cpuNow();
  const t0 = performance.now();
  const clients = CLUSTERS.map((c) => startClient<{ mbps: number[] }>({ job: 'bulk', route: server.route(c), upstreamCA: pki.ca, bytes: BYTES, runs: 1 }));
  // The clients' CPU is read just before each exits: sample it while they run.
  const clientCpu = new Map<number, number>();
  const sampler = setInterval(() => {
    for (const c of clients) {
      const v = safeCpu(c.proc.pid!);
      if (Number.isFinite(v)) clientCpu.set(c.proc.pid!, v);
    }
  }, 100);
  const results = await Promise.all(clients.map((c) => c.result));
  const seconds = (performance.now() - t0) / 1000;
  clearInterval(sampler);
  const after = cpuNow();
  const loadavg = fs.readFileSync('/proc/loadavg', 'utf8').trim();
  const r: Round = {
    workers,
    aggregateMBps: (BYTES * CLUSTERS.length) / seconds / 1e6,
    perClientMBps: results.map((x) => Math.round(x.mbps[0]! * 10) / 10),
    cores: {
      server: (after.server - before.server) / seconds,
      dataPath: (after.dataPath - before.dataPath) / seconds,
      agents: (after.agents - before.agents) / seconds,
      upstream: (after.upstream - before.upstream) / seconds,
      clients: [...clientCpu.values()].reduce((a, b) => a + b, 0) / seconds,
    },
    loadavg,
  };
  for (const a of agents) await stop(a);
  await stop(server.proc);
  removeCgroups();
  return r;
}

async function main(): Promise<void> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kubetunnel-bench-workers-'));
  try {
    const pki = await makeCerts(path.join(tmp, 'pki'), CLUSTERS);
    const upstream = await startUpstream(pki);
    const rounds: Round[] = [];
    for (let i = 0; i < ROUNDS; i++)
      for (const workers of [1, 2]) {
        const r = await round(pki, tmp, upstream, workers);
        progress(`workers ${workers}: ${r.aggregateMBps.toFixed(0)} MB/s; cores server ${r.cores.server.toFixed(2)} (data path ${r.cores.dataPath.toFixed(2)}) agents ${r.cores.agents.toFixed(2)} upstream ${r.cores.upstream.toFixed(2)} clients ${r.cores.clients.toFixed(2)}; load ${r.loadavg}`);
        rounds.push(r);
      }
    const median = (w: number) => {
      const xs = rounds.filter((r) => r.workers === w).map((r) => r.aggregateMBps).sort((a, b) => a - b);
      return xs[Math.floor(xs.length / 2)]!;
    };
    const one = median(1);
    const two = median(2);
    process.stdout.write(
      JSON.stringify({ machine: { cpus: os.availableParallelism(), model: os.cpus()[0]?.model }, mibPerClient: BYTES / 1048576, ...(WORKER_CORES > 0 ? { workerCores: WORKER_CORES } : {}), rounds, medianMBps: { 1: one, 2: two }, ratio: two / one, target: 1.6 }, null, 2) + '\n',
    );
  } finally {
    await stopAll();
    removeCgroups();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch(async (err: unknown) => {
  process.stderr.write(`bench workers: ${(err as Error).stack ?? String(err)}\n`);
  await stopAll();
  process.exit(1);
});
