/**
 * End-to-end benchmark: the same work over every path in one run, every
 * party a separate process on loopback.
 *
 *   direct      client -> upstream (TLS)
 *   kubetunnel  client -> server frontend (TLS, CONNECT) -> tunnel (wss) -> agent -> upstream, TLS end to end inside
 *   ssh -R      client -> OpenSSH reverse tunnel -> upstream, TLS end to end inside
 *   node relay  client -> front (TLS, CONNECT) -> back (TLS) -> upstream: the same hops, nothing else (relay.ts)
 *
 * and, in the L7 scenario (l7.ts), HTTP requests over direct, kubetunnel L7
 * (/clusters/<name>/...), two nginx in series (nginx.ts) and two bare Node.js
 * proxies in series (l7relay.ts); in the watch
 * fan-out (watch.ts), one controller's watches on many clusters through L7
 * over HTTP/1.1 and HTTP/2.
 *
 *   npm run bench [-- --quick] [-- --only bulk,small] [-- --out l7.json] [-- --member-http1]
 *     [-- --watch-clusters 200 --watches-per-cluster 20 --watch-rate 2000 --watch-seconds 30]
 *
 * Writes bench/results/latest.json (with the last results of the
 * benchmarks that run on their own) and the tables in docs/benchmarks.md;
 * --quick (the CI smoke run: small counts, checks nothing about speed)
 * writes bench/results/quick.json only, --only bench/results/partial.json
 * (--out NAME: bench/results/NAME instead).
 * Exits non-zero only if a scenario could not complete.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startAgent, makeCerts, ROOT, startRelay, startServer, startUpstream } from './parties.js';
import { freePort, machine, outOption, progress, stopAll, stopOnSignals, wholeNumberOption, within } from './procs.js';
import { writeReport, type Report } from './report.js';
import { l7 } from './l7.js';
import { watch } from './watch.js';
import * as scenario from './scenarios.js';
import { startSsh, type Ssh } from './ssh.js';

const quick = process.argv.includes('--quick');
/** --member-http1: the upstream and the watch scenario's stand-in apiservers speak HTTP/1.1 only (by default they offer h2 too, as a kube-apiserver). */
const memberProtocols = process.argv.includes('--member-http1') ? 'http1' : 'h2';
/**
 * The last results of the benchmarks that run on their own (npm run
 * bench:fleet, the workers and idle-floor scripts), each with its own date
 * and machine, so that latest.json carries every figure.
 */
function separateRuns(): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const name of ['fleet', 'fleet-ping-30s', 'fleet-ping-600s', 'idle-floor', 'workers']) {
    const file = path.join(ROOT, 'bench/results', `${name}.json`);
    if (fs.existsSync(file)) out[name] = JSON.parse(fs.readFileSync(file, 'utf8')) as unknown;
  }
  return out;
}

/** --only bulk,small: run just these scenarios (results go to bench/results/partial.json). */
const onlyAt = process.argv.indexOf('--only');
const only = onlyAt > 0 ? new Set((process.argv[onlyAt + 1] ?? '').split(',').filter(Boolean)) : undefined;
const SCENARIOS = ['bulk', 'small', 'setup', 'fairness', 'slowReader', 'manyAgents', 'manyStreams', 'l7', 'watch'];
if (only && (only.size === 0 || [...only].some((n) => !SCENARIOS.includes(n)))) {
  process.stderr.write(`--only takes a comma-separated list of: ${SCENARIOS.join(', ')}\n`);
  process.exit(2);
}
const outName = outOption(process.argv);
const scale: scenario.Scale = { ...(quick ? scenario.QUICK : scenario.FULL) };
// The watch fan-out's size, for looking into a figure: --watch-clusters N --watches-per-cluster N --watch-rate N --watch-seconds N.
for (const key of ['watchClusters', 'watchesPerCluster', 'watchRate', 'watchSeconds'] as const) {
  scale[key] = wholeNumberOption(process.argv, key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)) ?? scale[key];
}
/** Longest any one scenario may take before the run counts as broken. */
const scenarioLimitMs = quick ? 45_000 : 20 * 60_000;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kubetunnel-bench-'));
let ssh: Ssh | undefined;

async function cleanUp(): Promise<void> {
  await ssh?.stop();
  await stopAll();
  fs.rmSync(tmp, { recursive: true, force: true });
}

// On a signal: the processes this run started, then the ssh -R connections, then the files.
stopOnSignals(async () => {
  await ssh?.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function main(): Promise<boolean> {
  const date = new Date().toISOString();
  progress(`${quick ? 'quick' : 'full'} run; temporary files in ${tmp}`);
  const runs = (name: string) => !only || only.has(name);
  const names = (n: number) => Array.from({ length: n }, (_, i) => `c${i + 1}`);
  const clusters = names(runs('manyStreams') ? scale.streamClusters : 2);
  const watchClusters = runs('watch') ? names(scale.watchClusters) : [];
  const certified = watchClusters.length > clusters.length ? watchClusters : clusters;
  const agentClusters = runs('manyAgents') ? [...certified, 'many'] : certified;
  progress(`certificates: CA, server, ${agentClusters.length} agents`);
  const pki = await makeCerts(path.join(tmp, 'certs'), agentClusters);

  progress('upstream, kubetunnel server, agents for c1 and c2');
  const upstream = await startUpstream(pki, memberProtocols);
  const server = await startServer(pki, tmp);
  const agentC1 = startAgent(pki, server, 'c1', upstream.port);
  const agentC2 = startAgent(pki, server, 'c2', upstream.port);
  await within(30_000, 'agents c1 and c2 registering', server.waitAgents((m) => m.get('c1') === 1 && m.get('c2') === 1));

  progress('ssh -R: sshd and two ssh -N -R connections');
  ssh = await startSsh(tmp, upstream.port, [await freePort(), await freePort()]).catch((err: unknown) => {
    progress(`ssh -R unavailable (${String(err)}); the ssh -R figures are left out`);
    return undefined;
  });

  progress('node relay: front and back processes');
  const relay = await startRelay(pki, upstream.port);

  const b: scenario.Bench = { scale, tmp, pki, server, upstreamPort: upstream.port, memberProtocols, agentC1, agentC2, clusters, watchClusters, ssh, relay };
  const plan: Array<[string, string, (b: scenario.Bench) => Promise<unknown>]> = [
    ['bulk', `bulk: one stream, ${scale.bulkBytes >> 20} MiB download, ${scale.runs} run(s) per path`, scenario.bulk],
    ['small', `small requests: ${scale.small} sequential GETs on one kept-alive connection, ${scale.runs} run(s) per path`, scenario.small],
    ['setup', `connection setup: ${scale.setup} × (connect + TLS + one GET), ${scale.runs} run(s) per path`, scenario.setup],
    ['fairness', `fairness: ${scale.probe} small GETs beside a full-speed download on the same tunnel vs another, ${scale.runs} run(s)`, scenario.fairness],
    ['slowReader', `slow reader: ${scale.slowBytes >> 20} MiB of a 1 GiB download at ${scale.slowRate >> 20} MiB/s, small GETs beside it`, scenario.slowReader],
    ['manyAgents', `many agents: ${scale.agents} agent sessions in ${scale.agentProcesses} processes`, scenario.manyAgents],
    ['manyStreams', `many streams: ${scale.streams} open CONNECT streams across ${scale.streamClusters} clusters`, scenario.manyStreams],
    ['l7', `L7: ${scale.l7Small} small GETs, ${scale.l7Clients} clients for ${scale.l7Seconds} s, ${scale.l7ListRuns} LISTs of ${scale.l7ListBytes >> 20} MiB over direct, kubetunnel L7, nginx chain, node chain`, l7],
    ['watch', `watch fan-out: ${scale.watchClusters} clusters × ${scale.watchesPerCluster} watches, ${scale.watchRate} events/s for ${scale.watchSeconds} s, HTTP/1.1 and HTTP/2`, watch],
  ];
  const results: Record<string, unknown> = {};
  const failed: string[] = [];
  for (const [name, title, run] of plan) {
    if (!runs(name)) continue;
    progress(title);
    try {
      results[name] = await within(scenarioLimitMs, name, run(b));
    } catch (err) {
      failed.push(name);
      results[name] = { error: String(err) };
      progress(`  FAILED: ${String(err)}`);
    }
  }

  const report = {
    date,
    quick,
    machine: machine(),
    memberProtocols: memberProtocols === 'h2' ? 'h2, http/1.1' : 'http/1.1',
    loadavg: fs.readFileSync('/proc/loadavg', 'utf8').trim(),
    ssh: ssh ? ssh.version : 'unavailable',
    scale,
    results,
    ...(!quick && !only ? { separateRuns: separateRuns() } : {}),
  };
  if (failed.length > 0) {
    process.stderr.write(`${JSON.stringify(report, null, 2)}\n`);
    progress(`scenarios that did not complete: ${failed.join(', ')}; no results written`);
    return false;
  }
  const out = path.join(ROOT, 'bench/results', outName || (only ? 'partial.json' : quick ? 'quick.json' : 'latest.json'));
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, JSON.stringify(report, null, 2) + '\n');
  progress(`wrote ${path.relative(ROOT, out)}`);
  if (!quick && !only) {
    writeReport(path.join(ROOT, 'docs/benchmarks.md'), report as unknown as Report);
    progress('wrote the tables in docs/benchmarks.md');
  }
  return true;
}

main()
  .catch((err: unknown) => {
    progress(`harness failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    return false;
  })
  .then(async (ok) => {
    progress('stopping every process');
    await cleanUp().catch((err: unknown) => progress(`clean-up: ${String(err)}`));
    process.exit(ok ? 0 : 1);
  });
