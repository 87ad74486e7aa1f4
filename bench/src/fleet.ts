/**
 * Fleet scale: many agent sessions on one `kubetunnel server` process
 * (issue 14: 10,000). The sessions (one cluster, as a DaemonSet's agents
 * would be) run in a few processes of in-process agents (bench/src/agents.ts,
 * each agent with its tunnel and its health listener); the server's agent
 * connection limit is raised above the count for the run.
 *
 *   npm run bench:fleet [-- --quick] [-- --sessions N] [-- --processes P] [-- --idle SECONDS] [-- --concurrency C]
 *                       [-- --ping-interval SECONDS] [-- --out FILE]
 *
 * Reports the time from the first pool's start until the server has logged
 * every registration, the server's RSS, and its CPU while idle (nothing but
 * the tunnels' pings) over `--idle` seconds, with the load average at each
 * step (the machine is shared). Before the agents, the floor under the
 * registration time: the CPU of bare TLS handshakes with the gateway's
 * settings and an agent's certificate, server and client side
 * (bench/src/handshakes.ts), and what `sessions` of them take of the
 * machine's cores at the least. --ping-interval is the server's (the agents
 * take it from the server). Writes bench/results/fleet.json (fleet-quick.json
 * with --quick; --out NAME writes bench/results/NAME). --quick (200 sessions, 3 s idle) checks
 * that every session registers; it says nothing about speed.
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Defaults } from '@kubetunnel/shared';
import { endInput, makeCerts, ROOT, startUpstream, type Pki } from './parties.js';
import { cpuOf, line, loadavg, machine, outOption, progress, rssOf, start, startAgentPools, stopAll, stopOnSignals, wholeNumberOption, within } from './procs.js';

const CLI = path.join(ROOT, 'packages/cli/bin/kubetunnel.js');
const DIST = fileURLToPath(new URL('.', import.meta.url));

const argv = process.argv.slice(2);
const option = (name: string): number | undefined => wholeNumberOption(argv, name);
const quick = argv.includes('--quick');
const sessions = option('sessions') ?? (quick ? 200 : 10_000);
const processes = option('processes') ?? (quick ? 2 : 5);
const idleSeconds = option('idle') ?? (quick ? 3 : 30);
const pingIntervalMs = (option('ping-interval') ?? Defaults.pingIntervalMs / 1000) * 1000;
const outName = outOption(argv);
/** First dials in flight at once per agent process (agents.ts). */
const concurrency = option('concurrency') ?? 50;
/** Time for the sessions to settle after the last registration, before the idle measurement. */
const SETTLE_MS = quick ? 1000 : 5000;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kubetunnel-fleet-'));

/** The server, with its listeners' ports and a count of "agent registered" lines. */
interface FleetServer {
  proc: ChildProcess;
  agentPort: number;
  /** "agent registered" lines logged so far. */
  registered(): number;
}

async function startServer(pki: Pki): Promise<FleetServer> {
  const tokens = path.join(tmp, 'tokens.csv');
  fs.writeFileSync(tokens, 'fleet-token,bench,1,"bench"\n');
  const limit = String(sessions + 1000);
  const proc = start(CLI, [
    'server', '--cert', pki.file('server.crt'), '--key', pki.file('server.key'), '--client-ca', pki.file('client-ca.crt'),
    '--bind-address', '127.0.0.1', '--proxy-port', '0', '--agent-port', '0', '--health-port', '0', '--admin-port', '0',
    '--token-file', tokens, '--max-agent-connections', limit, '--max-connections', limit,
    '--shutdown-delay', '0s', '--registration-grace', '0s', '--grace-period', '2s', '--log-level', 'info', '--ping-interval', `${pingIntervalMs}ms`,
  ]);
  let count = 0;
  let buf = '';
  const ports: Record<string, number> = {};
  let ready: () => void;
  const listening = new Promise<void>((r) => (ready = r));
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const text = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (text.includes('"agent registered"')) count++;
      else if (text.includes('"listener"')) {
        const l = JSON.parse(text) as { listener?: string; address?: string };
        if (l.listener && l.address) ports[l.listener] = Number(l.address.slice(l.address.lastIndexOf(':') + 1));
        if (ports.agent) ready();
      }
    }
  });
  await within(30_000, 'server listeners', listening);
  return { proc, agentPort: ports.agent!, registered: () => count };
}

/** Bare handshakes measured for the floor (handshakes.ts). */
const FLOOR_HANDSHAKES = quick ? 50 : 500;

/** CPU per bare TLS handshake (gateway settings, agent certificate), server and client, and the least time `sessions` of them take on this machine's cores. */
interface HandshakeFloor {
  handshakes: number;
  serverCpuUs: number;
  clientCpuUs: number;
  /** sessions × (server + client) CPU ÷ cores: the registration time no server could beat here. */
  floorForSessionsS: number;
}

async function handshakeFloor(pki: Pki): Promise<HandshakeFloor> {
  const script = path.join(DIST, 'handshakes.js');
  const server = start(script, ['server', pki.dir], { stdin: true });
  const { port } = await line<{ port: number }>(server, (o) => typeof o.port === 'number', 'handshake server');
  const cpu0 = cpuOf(server.pid!);
  const client = start(script, ['client', pki.dir, String(port), String(FLOOR_HANDSHAKES)]);
  const r = await within(5 * 60_000, 'bare handshakes', line<{ handshakes: number; cpuMs: number }>(client, (o) => typeof o.cpuMs === 'number', 'handshake client'));
  const serverCpuUs = ((cpuOf(server.pid!) - cpu0) * 1e6) / r.handshakes;
  await endInput(server);
  const clientCpuUs = (r.cpuMs * 1000) / r.handshakes;
  return {
    handshakes: r.handshakes,
    serverCpuUs: Math.round(serverCpuUs),
    clientCpuUs: Math.round(clientCpuUs),
    floorForSessionsS: Math.round((sessions * (serverCpuUs + clientCpuUs)) / 1e6 / os.cpus().length * 10) / 10,
  };
}

stopOnSignals(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function main(): Promise<boolean> {
  progress(`${sessions} agent sessions in ${processes} processes on one server, PING every ${pingIntervalMs / 1000} s; files in ${tmp}`);
  const pki = await makeCerts(path.join(tmp, 'certs'), ['fleet']);
  const floor = await handshakeFloor(pki);
  progress(
    `  ${floor.handshakes} bare TLS handshakes (the gateway's settings, an agent's certificate): server ${floor.serverCpuUs} µs, ` +
      `agent ${floor.clientCpuUs} µs of CPU each; ${sessions} of them take at least ${floor.floorForSessionsS} s on ${os.cpus().length} cores`,
  );
  const upstream = await startUpstream(pki);
  const server = await startServer(pki);
  const pid = server.proc.pid!;
  const rssBefore = rssOf(pid);
  const load = { start: loadavg() } as Record<string, string>;

  const t0 = performance.now();
  const { pools, ready: poolsReady } = startAgentPools(path.join(DIST, 'agents.js'), sessions, processes, (n, i) => ({
    server: `wss://127.0.0.1:${server.agentPort}`,
    certDir: pki.dir,
    clusters: ['fleet'],
    perCluster: n,
    apiserver: `https://127.0.0.1:${upstream.port}`,
    idPrefix: `p${i}-`,
    concurrency,
  }));
  const cpu0 = cpuOf(pid);
  await within(
    10 * 60_000,
    'registration',
    new Promise<void>((resolve, reject) => {
      for (const p of pools) p.once('exit', (code) => reject(new Error(`an agent pool exited (${code}) before every session registered`)));
      const t = setInterval(() => {
        if (server.registered() >= sessions) {
          clearInterval(t);
          resolve();
        }
      }, 50);
    }),
  );
  const registeredInMs = Math.round(performance.now() - t0);
  const registerCpu = cpuOf(pid) - cpu0;
  const rssRegistered = rssOf(pid);
  load.registered = loadavg();
  progress(`  ${sessions} registered in ${(registeredInMs / 1000).toFixed(1)} s (server CPU ${registerCpu.toFixed(1)} s); server RSS ${(rssRegistered / 2 ** 20).toFixed(0)} MiB`);
  await within(5 * 60_000, 'agent pools ready', poolsReady);

  await new Promise((r) => setTimeout(r, SETTLE_MS));
  load.idle = loadavg();
  const idle0 = { server: cpuOf(pid), pools: pools.reduce((s, p) => s + cpuOf(p.pid!), 0), t: performance.now() };
  let rssPeakIdle = rssOf(pid);
  const sampler = setInterval(() => (rssPeakIdle = Math.max(rssPeakIdle, rssOf(pid))), 500);
  await new Promise((r) => setTimeout(r, idleSeconds * 1000));
  clearInterval(sampler);
  const wall = (performance.now() - idle0.t) / 1000;
  const idleCpu = (cpuOf(pid) - idle0.server) / wall;
  const poolsCpu = (pools.reduce((s, p) => s + cpuOf(p.pid!), 0) - idle0.pools) / wall;
  const rssIdle = rssOf(pid);
  const stillRegistered = server.registered();
  load.end = loadavg();
  progress(`  idle ${wall.toFixed(0)} s: server CPU ${(idleCpu * 100).toFixed(1)}% of a core (agent pools ${(poolsCpu * 100).toFixed(1)}%); server RSS ${(rssIdle / 2 ** 20).toFixed(0)} MiB`);

  const result = {
    date: new Date().toISOString(),
    quick,
    machine: machine(),
    loadavg: load,
    sessions,
    processes,
    concurrencyPerProcess: concurrency,
    pingIntervalMs,
    registeredInMs,
    serverCpuDuringRegistrationS: Math.round(registerCpu * 100) / 100,
    handshakeFloor: floor,
    serverRss: { before: rssBefore, registered: rssRegistered, afterIdle: rssIdle, peakIdle: rssPeakIdle },
    idle: { seconds: Math.round(wall * 10) / 10, serverCpuShare: Math.round(idleCpu * 10_000) / 10_000, agentPoolsCpuShare: Math.round(poolsCpu * 10_000) / 10_000 },
    /** Registrations logged by the end (more than `sessions`: some session re-registered during the idle time). */
    registrationsLogged: stillRegistered,
    targets: {
      registeredWithin60s: registeredInMs <= 60_000,
      rssAtMost1GiB: Math.max(rssRegistered, rssPeakIdle) <= 2 ** 30,
      idleCpuAtMost5Percent: idleCpu <= 0.05,
    },
  };
  const out = path.join(ROOT, 'bench/results', outName ?? (quick ? 'fleet-quick.json' : 'fleet.json'));
  fs.writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
  progress(`wrote ${path.relative(ROOT, out)}`);
  await Promise.all(pools.map(endInput));
  return stillRegistered >= sessions;
}

main()
  .catch((err: unknown) => {
    progress(`fleet run failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    return false;
  })
  .then(async (ok) => {
    await stopAll().catch(() => undefined);
    fs.rmSync(tmp, { recursive: true, force: true });
    process.exit(ok ? 0 : 1);
  });
