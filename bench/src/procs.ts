/**
 * The processes of a benchmark run: starting them, reading the JSON lines
 * they print, their memory and CPU, and stopping every one of them at the end.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const children = new Set<ChildProcess>();

/** Extra node flags for every node party, e.g. BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof". */
const nodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
/** BENCH_LOG_DIR=dir keeps every party's standard output there, one file each. */
const logDir = process.env.BENCH_LOG_DIR;

/**
 * Starts a process. Its stdout and stderr are read for as long as it lives
 * (a child whose log pipe is gone may never exit), the last 4 KiB of stderr
 * kept for error messages.
 */
export function start(file: string, args: string[], opts: { stdin?: boolean; node?: boolean } = {}): ChildProcess {
  const child = spawn(opts.node === false ? file : process.execPath, opts.node === false ? args : [...nodeArgs, file, ...args], {
    stdio: [opts.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  child.once('exit', () => children.delete(child));
  child.once('error', () => children.delete(child));
  let tail = '';
  const log = logDir ? fs.createWriteStream(path.join(logDir, `${path.basename(file)}-${child.pid}.log`)) : undefined;
  child.stdout!.on('data', (d: Buffer) => log?.write(d));
  child.once('exit', () => log?.end());
  child.stderr!.on('data', (d: Buffer) => (tail = (tail + d.toString()).slice(-4096)));
  stderrTails.set(child, () => tail);
  return child;
}

const stderrTails = new WeakMap<ChildProcess, () => string>();

/** The first JSON line on `child`'s stdout that `pred` accepts. */
export function line<T>(child: ChildProcess, pred: (o: Record<string, unknown>) => boolean, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onExit = (code: number | null, signal: string | null) =>
      reject(new Error(`${what}: process exited (${code ?? signal}) before it was ready: ${stderrTails.get(child)?.() ?? ''}`));
    const onData = (d: Buffer) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const text = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let o: Record<string, unknown>;
        try {
          o = JSON.parse(text) as Record<string, unknown>;
        } catch {
          continue; // not a JSON line
        }
        if (pred(o)) {
          child.stdout!.off('data', onData);
          child.off('exit', onExit);
          return resolve(o as T);
        }
      }
    };
    child.stdout!.on('data', onData);
    child.once('exit', onExit);
  });
}

/** Rejects with a clear message if `p` takes longer than `ms`. */
export function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000} s`)), ms);
    }),
  ]);
}

/** Waits for `child` to exit, at most `ms`; true if it did. */
function exited(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => (clearTimeout(t), resolve(true)));
  });
}

/** Stops one process: SIGTERM (it may drain), then SIGKILL after `graceMs`. */
export async function stop(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  if (!(await exited(child, graceMs))) {
    child.kill('SIGKILL');
    await exited(child, 2000);
  }
}

/** Stops every process this run started; their pipes are read until they are gone. */
export async function stopAll(): Promise<void> {
  await Promise.all([...children].map((c) => stop(c)));
}

/** Resident set size of a process, in bytes. */
export function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** The load average over 1, 5 and 15 minutes, as /proc/loadavg gives it: the machine is shared. */
export const loadavg = (): string => fs.readFileSync('/proc/loadavg', 'utf8').trim().split(' ').slice(0, 3).join(' ');

/** CPU time every process of the machine has used so far, in seconds of one core (the first line of /proc/stat: all but idle and iowait). */
export function machineCpu(): number {
  const [, ...ticks] = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/);
  const n = ticks.map(Number);
  return (n.reduce((a, b) => a + b, 0) - (n[3] ?? 0) - (n[4] ?? 0)) / 100;
}

/** The machine a result was measured on, as every result file names it. */
export function machine(): { cpuModel: string; cores: number; memoryGiB: number; node: string; os: string } {
  const cpus = os.cpus();
  return {
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    cores: cpus.length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    os: `${os.type()} ${os.release()}`,
  };
}

/** Peak resident set size of a process (VmHWM), in bytes. */
export function peakOf(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** CPU time (user + system) a process has used so far, in seconds (Linux clock ticks are 1/100 s). */
export function cpuOf(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

const began = performance.now();
/** A progress line on stderr, with the time since the run began. */
export function progress(msg: string): void {
  process.stderr.write(`[bench ${((performance.now() - began) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);
}

/**
 * Ports free now, below the kernel's ephemeral range: a process restarted on
 * its port must not find it taken by an outgoing connection (test/ha.ts uses it too).
 */
export async function lowFreePorts(n: number): Promise<number[]> {
  const [low] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
  const top = Math.min(low ?? 32768, 32768) - 1;
  const ports: number[] = [];
  while (ports.length < n) {
    const port = 10_000 + Math.floor(Math.random() * (top - 10_000));
    if (ports.includes(port)) continue;
    const free = await new Promise<boolean>((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (free) ports.push(port);
  }
  return ports;
}

/** A child process's entry: prints main's result as one JSON line and exits 0, or its error and exits 1. */
export function runChild(main: () => Promise<unknown>): void {
  main().then(
    (r) => {
      console.log(JSON.stringify(r));
      process.exit(0);
    },
    (err: unknown) => {
      console.error(String(err));
      process.exit(1);
    },
  );
}

/** `--out NAME` of a benchmark's arguments: a file name in bench/results (any directory part is dropped), or undefined. */
export function outOption(argv: string[]): string | undefined {
  const i = argv.indexOf('--out');
  return i >= 0 ? path.basename(argv[i + 1] ?? '') || undefined : undefined;
}

/** `--name N` of a benchmark's arguments: a whole number of at least 1, or undefined; anything else exits 2 saying so. */
export function wholeNumberOption(argv: string[], name: string): number | undefined {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return undefined;
  const n = Number(argv[i + 1]);
  if (!Number.isInteger(n) || n < 1) {
    process.stderr.write(`--${name} takes a whole number of at least 1\n`);
    process.exit(2);
  }
  return n;
}

/** On SIGINT or SIGTERM: stop every process started here, then `cleanUp` (temporary files), then exit 130. */
export function stopOnSignals(cleanUp: () => Promise<void> | void = () => {}): void {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      progress(`${signal}: stopping`);
      void stopAll()
        .then(cleanUp)
        .finally(() => process.exit(130));
    });
  }
}

/**
 * `sessions` agent sessions split over `processes` processes of `script`
 * (bench/src/agents.ts), each given the JSON of `config(count, index, first)`
 * (its sessions are `first` to `first + count - 1` of all); with a promise
 * that resolves once every pool says all its agents hold a tunnel.
 */
export function startAgentPools(
  script: string,
  sessions: number,
  processes: number,
  config: (count: number, index: number, first: number) => object,
): { pools: ChildProcess[]; ready: Promise<unknown> } {
  const per = Math.ceil(sessions / processes);
  const pools = Array.from({ length: processes }, (_, i) => Math.max(0, Math.min(per, sessions - i * per)))
    .filter((n) => n > 0)
    .map((n, i) => start(script, [JSON.stringify(config(n, i, i * per))], { stdin: true }));
  // Each pool prints {"ready": true} once all its agents have their tunnel; read from the start.
  return { pools, ready: Promise.all(pools.map((p, i) => line(p, (o) => o.ready === true, `agent pool ${i}`))) };
}
