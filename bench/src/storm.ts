/**
 * Reconnect storm: many agent sessions come back at once after their server
 * restarts. One `kubetunnel server` process; `sessions` agent sessions of
 * one cluster spread over a few processes (bench/src/agents.ts, several
 * sessions each, with the agent's default backoff, 500 ms doubling up to
 * 30 s with full jitter); one more cluster,
 * "probe", with its own `kubetunnel agent`, and a client of it
 * (bench/src/probe.ts) sending a small request every 20 ms through the hub.
 * The server gets SIGTERM (or SIGKILL with --kill) and starts again on the
 * same ports; then every session reconnects.
 *
 *   npm run bench:storm [-- --quick] [-- --sessions N] [-- --processes P] [-- --limit N] [-- --kill]
 *
 * Reports the registrations completed per 100 ms after the restart, the
 * time until every session is back, the server's CPU over time (from
 * /proc/<pid>/stat), the handshake limit's counters (503s, connections
 * closed at accept, the peak admitted at once), and the probe's latency
 * before and during the storm. Writes bench/results/storm.json
 * (storm-quick.json with --quick, storm-limit-N.json with --limit).
 *
 * --quick (CI: 200 sessions, a limit of 4, backoff up to 5 s) checks behaviour, not speed: it
 * exits non-zero unless every session came back and the server reports its
 * limit and never admitted more than it at once. Whether any agent is
 * answered 503 depends on how fast the machine handshakes (the 503 itself
 * is tested in test/handshake-limit.test.ts); the counts are in the result.
 */
import { type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { percentile } from './common.js';
import { endInput, makeCerts, ROOT, startUpstream, type Pki } from './parties.js';
import { cpuOf, line, lowFreePorts, machine, progress, start, startAgentPools, stop, stopAll, stopOnSignals, wholeNumberOption, within } from './procs.js';

const CLI = path.join(ROOT, 'packages/cli/bin/kubetunnel.js');
const DIST = fileURLToPath(new URL('.', import.meta.url));
const TOKEN = 'storm-token';

const argv = process.argv.slice(2);
const flag = (name: string) => argv.includes(`--${name}`);
const option = (name: string): number | undefined => wholeNumberOption(argv, name);
const quick = flag('quick');
const sessions = option('sessions') ?? (quick ? 200 : 2000);
const processes = option('processes') ?? (quick ? 2 : 4);
/** The server's --max-concurrent-handshakes; undefined: its default. */
const limit = option('limit') ?? (quick ? 4 : undefined);
const kill = flag('kill');
/** The agent's defaults (kubetunnel agent): 500 ms doubling up to 30 s, full jitter; --quick: up to 5 s. */
const BACKOFF = quick ? { initialMs: 200, maxMs: 5000 } : { initialMs: 500, maxMs: 30_000 };
const PROBE_INTERVAL_MS = 20;
const BEFORE_MS = quick ? 2000 : 5000;
const AFTER_MS = quick ? 1000 : 3000;
const BUCKET_MS = 100;
const CPU_SAMPLE_MS = 100;
/** A 100 ms sample at or above this share of one core counts as pinned. */
const PINNED = 0.9;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kubetunnel-storm-'));

interface ServerRun {
  proc: ChildProcess;
  /** Epoch ms of every "agent registered" line of cluster storm, and of cluster probe. */
  registered: number[];
  probeRegistered: number[];
  /** Epoch ms the agent listener was up. */
  listeningAt: Promise<number>;
}

type Ports = { proxy: number; agent: number; health: number; admin: number };

function startServer(pki: Pki, ports: Ports): ServerRun {
  const proc = start(CLI, [
    'server', '--cert', pki.file('server.crt'), '--key', pki.file('server.key'), '--client-ca', pki.file('client-ca.crt'),
    '--bind-address', '127.0.0.1', '--proxy-port', String(ports.proxy), '--agent-port', String(ports.agent),
    '--health-port', String(ports.health), '--admin-port', String(ports.admin), '--token-file', path.join(tmp, 'tokens.csv'),
    '--shutdown-delay', '0s', '--registration-grace', '0s', '--grace-period', '2s', '--log-level', 'info',
    '--max-agent-connections', '100000',
    ...(limit !== undefined ? ['--max-concurrent-handshakes', String(limit)] : []),
  ]);
  const run: ServerRun = { proc, registered: [], probeRegistered: [], listeningAt: Promise.resolve(0) };
  let buf = '';
  let listening: (t: number) => void;
  run.listeningAt = new Promise((r) => (listening = r));
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const text = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!text.startsWith('{')) continue;
      const l = JSON.parse(text) as { msg?: string; cluster?: string; time?: string; listener?: string };
      const time = Date.parse(l.time ?? '');
      if (l.msg === 'agent registered') (l.cluster === 'probe' ? run.probeRegistered : run.registered).push(time);
      else if (l.listener === 'agent' && l.msg === 'agent listening') listening(time);
    }
  });
  return run;
}

/** Resolves once `pred` holds, checking every 50 ms. */
async function until(pred: () => boolean): Promise<void> {
  while (!pred()) await new Promise((r) => setTimeout(r, 50));
}

/** The server's /metrics, as name{labels} -> value. */
async function scrape(adminPort: number): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const out = new Map<string, number>();
  for (const l of text.split('\n')) {
    if (l.startsWith('#') || l.trim() === '') continue;
    const i = l.lastIndexOf(' ');
    out.set(l.slice(0, i), Number(l.slice(i + 1)));
  }
  return out;
}

const lat = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const r = (x: number) => Math.round(x * 100) / 100;
  return { n: s.length, p50: r(percentile(s, 50)), p99: r(percentile(s, 99)), max: r(s[s.length - 1] ?? NaN) };
};

const loadAtStart = os.loadavg().map((x) => Math.round(x * 10) / 10);

async function main(): Promise<boolean> {
  progress(`${sessions} agent sessions in ${processes} processes, limit ${limit ?? 'default'}, restart by ${kill ? 'SIGKILL' : 'SIGTERM'}; files in ${tmp}`);
  const pki = await makeCerts(path.join(tmp, 'certs'), ['storm', 'probe']);
  fs.writeFileSync(path.join(tmp, 'tokens.csv'), `${TOKEN},bench,1,"bench"\n`);
  const [proxy, agent, health, admin] = await lowFreePorts(4);
  const ports: Ports = { proxy: proxy!, agent: agent!, health: health!, admin: admin! };
  const upstream = await startUpstream(pki);
  let server = startServer(pki, ports);
  await within(30_000, 'server start', server.listeningAt);

  const probeAgent = start(CLI, [
    'agent', '--server', `wss://localhost:${ports.agent}`, '--cluster', 'probe', '--agent-id', 'probe',
    '--cert', pki.file('agent-probe.crt'), '--key', pki.file('agent-probe.key'), '--ca', pki.file('ca.crt'),
    '--apiserver', `https://127.0.0.1:${upstream.port}`, '--health-port', '0', '--health-bind-address', '127.0.0.1', '--log-level', 'warn', '--grace-period', '2s',
  ]);
  await within(30_000, 'probe agent registering', until(() => server.probeRegistered.length > 0));

  progress(`first registration of ${sessions} sessions`);
  const t0 = Date.now();
  const { pools, ready } = startAgentPools(path.join(DIST, 'agents.js'), sessions, processes, (n, i) => ({
    server: `wss://localhost:${ports.agent}`,
    certDir: pki.dir,
    clusters: ['storm'],
    perCluster: n,
    apiserver: `https://127.0.0.1:${upstream.port}`,
    idPrefix: `p${i}-`,
    backoff: BACKOFF,
  }));
  await within(10 * 60_000, 'first registration', ready);
  const firstMs = Date.now() - t0;
  progress(`  all registered in ${(firstMs / 1000).toFixed(1)} s`);

  const probe = start(
    path.join(DIST, 'probe.js'),
    [JSON.stringify({ route: { kind: 'proxy', proxyPort: ports.proxy, cluster: 'probe', token: TOKEN, hubCA: pki.ca }, upstreamCA: pki.ca, intervalMs: PROBE_INTERVAL_MS })],
    { stdin: true },
  );
  // The samples line is long: read the whole output, and parse it once the pipe has closed.
  let probeOut = '';
  probe.stdout!.on('data', (d: Buffer) => (probeOut += d.toString()));
  const probeClosed = once(probe.stdout!, 'close');
  await within(30_000, 'probe', line(probe, (o) => o.ready === true, 'probe'));

  // CPU of the server (whichever process is current) and of the agent pools, every 100 ms.
  const cpu: Array<{ t: number; server: number; agents: number }> = [];
  let last = { t: Date.now(), server: cpuOf(server.proc.pid!), agents: pools.reduce((s, p) => s + cpuOf(p.pid!), 0), pid: server.proc.pid };
  const sampler = setInterval(() => {
    try {
      const t = Date.now();
      const pid = server.proc.pid;
      const s = server.proc.exitCode === null && server.proc.signalCode === null ? cpuOf(pid!) : last.server;
      const a = pools.reduce((sum, p) => sum + cpuOf(p.pid!), 0);
      const serverDelta = pid === last.pid ? s - last.server : s;
      cpu.push({ t, server: serverDelta / ((t - last.t) / 1000), agents: (a - last.agents) / ((t - last.t) / 1000) });
      last = { t, server: s, agents: a, pid };
    } catch {
      // a process between exit and restart
    }
  }, CPU_SAMPLE_MS);

  progress(`steady for ${BEFORE_MS / 1000} s, then the restart`);
  await new Promise((r) => setTimeout(r, BEFORE_MS));
  const restartAt = Date.now();
  const old = server;
  if (kill) old.proc.kill('SIGKILL');
  else old.proc.kill('SIGTERM');
  await once(old.proc, 'exit');
  const downAt = Date.now();
  server = startServer(pki, ports);
  const upAt = await within(30_000, 'server restart', server.listeningAt);
  progress(`  old server gone after ${downAt - restartAt} ms; new one listening ${upAt - restartAt} ms after the restart began`);
  await within(10 * 60_000, 'every session back', until(() => server.registered.length >= sessions && server.probeRegistered.length > 0));
  const allBackAt = server.registered[sessions - 1]!;
  progress(`  all ${sessions} back ${((allBackAt - restartAt) / 1000).toFixed(1)} s after the restart began`);
  await new Promise((r) => setTimeout(r, AFTER_MS));
  clearInterval(sampler);
  const metrics = await scrape(ports.admin);
  await endInput(probe);
  await probeClosed;
  const samplesLine = probeOut.split('\n').find((l) => l.startsWith('{"samples"'));
  if (!samplesLine) throw new Error('the probe printed no samples');
  const { samples } = JSON.parse(samplesLine) as { samples: Array<[number, number]> };

  // Registrations per 100 ms from the moment the new server listened.
  const buckets: number[] = [];
  for (const t of server.registered) {
    const b = Math.floor((t - upAt) / BUCKET_MS);
    while (buckets.length <= b) buckets.push(0);
    buckets[Math.max(0, b)]!++;
  }
  const perSecond: number[] = [];
  buckets.forEach((n, i) => (perSecond[Math.floor((i * BUCKET_MS) / 1000)] = (perSecond[Math.floor((i * BUCKET_MS) / 1000)] ?? 0) + n));

  // Server CPU, as shares of one core, from the restart to all back (and 1 s beyond).
  const storm = cpu.filter((c) => c.t >= upAt && c.t <= allBackAt + 1000);
  let run = 0;
  let longestPinned = 0;
  for (const c of storm) {
    run = c.server >= PINNED ? run + 1 : 0;
    longestPinned = Math.max(longestPinned, run);
  }
  const cpuPerHalfSecond: number[] = [];
  for (const c of cpu.filter((c) => c.t >= restartAt - 1000)) {
    const i = Math.floor((c.t - (restartAt - 1000)) / 500);
    cpuPerHalfSecond[i] = Math.max(cpuPerHalfSecond[i] ?? 0, Math.round(c.server * 100) / 100);
  }

  const probeBackAt = samples.find(([t, ms]) => t > upAt && ms >= 0)?.[0] ?? NaN;
  const ok = (from: number, to: number) => samples.filter(([t, ms]) => t >= from && t < to && ms >= 0).map(([, ms]) => ms);
  const probeFailures = samples.filter(([t, ms]) => t >= restartAt && ms < 0).length;

  const m = (k: string) => metrics.get(k) ?? 0;
  const handshakeBuckets = [...metrics].filter(([k]) => k.startsWith('kubetunnel_agent_handshake_duration_seconds_bucket'));
  const result = {
    date: new Date().toISOString(),
    quick,
    machine: { ...machine(), loadAverageAtEnd: os.loadavg().map((x) => Math.round(x * 10) / 10) },
    command: `npm run bench:storm -- ${argv.join(' ')}`.trim(),
    sessions,
    processes,
    restart: kill ? 'SIGKILL' : 'SIGTERM',
    limit: m('kubetunnel_agent_handshakes_limit'),
    loadAverageAtStart: loadAtStart,
    firstRegistrationMs: firstMs,
    oldServerGoneMs: downAt - restartAt,
    newServerListeningMs: upAt - restartAt,
    allBackMs: allBackAt - restartAt,
    allBackAfterListeningMs: allBackAt - upAt,
    registrationsPerSecond: perSecond,
    registrationsPer100msPeak: Math.max(...buckets),
    registrationsPer100ms: buckets,
    limited: {
      queued: m('kubetunnel_agent_handshakes_queued_total'),
      answered503: m('kubetunnel_agent_handshakes_limited_total{response="503"}'),
      closedAtAccept: m('kubetunnel_agent_handshakes_limited_total{response="closed"}'),
      admittedPeak: m('kubetunnel_agent_handshakes_admitted_peak'),
    },
    handshakeSeconds: {
      count: m('kubetunnel_agent_handshake_duration_seconds_count'),
      mean: Math.round((m('kubetunnel_agent_handshake_duration_seconds_sum') / m('kubetunnel_agent_handshake_duration_seconds_count')) * 1000) / 1000,
      buckets: Object.fromEntries(handshakeBuckets.map(([k, v]) => [/le="([^"]+)"/.exec(k)?.[1] ?? k, v])),
    },
    serverCpu: {
      /** Shares of one core, the highest 100 ms sample in each half second from 1 s before the restart. */
      perHalfSecondMax: cpuPerHalfSecond,
      stormMean: Math.round((storm.reduce((s, c) => s + c.server, 0) / Math.max(1, storm.length)) * 100) / 100,
      longestPinnedMs: longestPinned * CPU_SAMPLE_MS,
      pinnedMs: storm.filter((c) => c.server >= PINNED).length * CPU_SAMPLE_MS,
      stormMs: storm.length * CPU_SAMPLE_MS,
      /** Server CPU seconds from the new server's start to all back, per registration (503s and waits included). */
      msPerRegistration: Math.round(((storm.reduce((s, c) => s + c.server, 0) * CPU_SAMPLE_MS) / Math.max(1, server.registered.length)) * 100) / 100,
    },
    agentsCpuStormMean: Math.round((storm.reduce((s, c) => s + c.agents, 0) / Math.max(1, storm.length)) * 100) / 100,
    probe: {
      before: lat(ok(restartAt - BEFORE_MS, restartAt)),
      storm: lat(ok(probeBackAt, allBackAt)),
      after: lat(ok(allBackAt, Infinity)),
      backMs: probeBackAt - restartAt,
      failedWhileDown: probeFailures,
    },
  };
  process.stdout.write(JSON.stringify(result, null, 2) + '\n');
  const name = quick ? 'storm-quick.json' : limit !== undefined ? `storm-limit-${limit}.json` : 'storm.json';
  const out = path.join(ROOT, 'bench/results', name);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
  progress(`wrote ${path.relative(ROOT, out)}`);

  for (const p of pools) await endInput(p);
  await stop(probeAgent);
  await stop(server.proc);
  await stop(upstream.proc);

  const problems: string[] = [];
  if (server.registered.length < sessions) problems.push(`only ${server.registered.length} of ${sessions} sessions came back`);
  if (result.limited.admittedPeak > result.limit) problems.push(`admitted ${result.limited.admittedPeak} at once, over the limit of ${result.limit}`);
  if (result.limit !== (limit ?? result.limit) || !metrics.has('kubetunnel_agent_handshakes_admitted_peak')) problems.push('the server does not report its handshake limit');
  for (const p of problems) progress(`FAILED: ${p}`);
  return problems.length === 0;
}

async function cleanUp(): Promise<void> {
  await stopAll();
  fs.rmSync(tmp, { recursive: true, force: true });
}

stopOnSignals(() => fs.rmSync(tmp, { recursive: true, force: true }));

main()
  .catch((err: unknown) => {
    progress(`harness failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    return false;
  })
  .then(async (ok) => {
    await cleanUp().catch((err: unknown) => progress(`clean-up: ${String(err)}`));
    process.exit(ok ? 0 : 1);
  });
