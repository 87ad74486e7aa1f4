/**
 * End-to-end benchmark: the same work over three paths in one run, every
 * party a separate process on loopback.
 *
 *   direct      client -> upstream (TLS)
 *   kubetunnel  client -> server frontend (TLS, CONNECT) -> tunnel (wss) -> agent -> upstream, TLS end to end inside
 *   ssh -R      client -> OpenSSH reverse tunnel -> upstream, TLS end to end inside
 *
 *   npm run bench [-- --quick]
 *
 * Writes bench/results/latest.json (quick: bench/results/quick.json) and the
 * tables in docs/benchmarks.md (full runs only).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { rssOf, summary, type Route } from './common.js';
import { writeReport } from './report.js';
import { startSsh, type Ssh } from './ssh.js';

const quick = process.argv.includes('--quick');
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = path.join(ROOT, 'packages/cli/bin/kubetunnel.js');
const DIST = fileURLToPath(new URL('.', import.meta.url));
const TOKEN = 'bench-token';

const scale = quick
  ? { bulkBytes: 64 << 20, bulkRuns: 1, small: 500, setup: 50, probe: 200, streams: 1000, streamClusters: 10, agents: 100, slowBytes: 3 << 20 }
  : { bulkBytes: 1 << 30, bulkRuns: 3, small: 10_000, setup: 500, probe: 2000, streams: 10_000, streamClusters: 100, agents: 1000, slowBytes: 16 << 20 };

const children = new Set<ChildProcess>();
function start(args: string[], opts: { stdin?: boolean } = {}): ChildProcess {
  const child = spawn(process.execPath, args, { stdio: [opts.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** The first stdout line of `child` that `pred` accepts (JSON lines; others ignored). */
function line<T>(child: ChildProcess, pred: (o: Record<string, unknown>) => boolean, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    let buf = '';
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const onData = (d: Buffer) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const text = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          const o = JSON.parse(text) as Record<string, unknown>;
          if (pred(o)) {
            child.stdout!.off('data', onData);
            return resolve(o as T);
          }
        } catch {
          // not a JSON line
        }
      }
    };
    child.stdout!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`${what}: process exited ${code}: ${err.slice(-1000)}`)));
  });
}

const began = performance.now();
function progress(msg: string): void {
  process.stderr.write(`[bench ${((performance.now() - began) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);
}

async function client(job: Record<string, unknown>): Promise<Record<string, unknown>> {
  const c = start([path.join(DIST, 'client.js'), JSON.stringify(job)]);
  return line(c, () => true, `client ${String(job.job)}`);
}

async function freePort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as net.AddressInfo).port;
  s.close();
  return port;
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kubetunnel-bench-'));
  const certDir = path.join(dir, 'certs');
  let ssh: Ssh | undefined;
  try {
    const cli = (...args: string[]) => {
      const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`kubetunnel ${args.join(' ')}: ${r.stderr}`);
    };
    progress('certificates');
    cli('certs', 'init', '--dir', certDir);
    const clusters = Array.from({ length: scale.streamClusters }, (_, i) => `c${i + 1}`);
    for (const c of clusters) cli('certs', 'agent', '--dir', certDir, '--cluster', c);
    cli('certs', 'agent', '--dir', certDir, '--cluster', 'many');
    fs.writeFileSync(path.join(dir, 'tokens.csv'), `${TOKEN},bench,1,"bench"\n`);
    const ca = fs.readFileSync(path.join(certDir, 'ca.crt'), 'utf8');

    progress('upstream, server, agents');
    const upstream = start([path.join(DIST, 'upstream.js'), path.join(certDir, 'server.crt'), path.join(certDir, 'server.key')]);
    const { port: upstreamPort } = await line<{ port: number }>(upstream, (o) => typeof o.port === 'number', 'upstream');
    const server = start([
      CLI, 'server', '--cert', path.join(certDir, 'server.crt'), '--key', path.join(certDir, 'server.key'), '--ca', path.join(certDir, 'ca.crt'),
      '--bind-address', '127.0.0.1', '--proxy-port', '0', '--agent-port', '0', '--health-port', '0', '--admin-port', '0',
      '--token-file', path.join(dir, 'tokens.csv'), '--max-streams-per-client', '100000', '--log-level', 'info',
    ]);
    const ports: Record<string, number> = {};
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      server.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        for (const m of buf.matchAll(/"listener":"(\w+)","address":"[\d.]+:(\d+)"/g)) ports[m[1]!] = Number(m[2]);
        if (Object.keys(ports).length === 4) resolve();
      });
      server.once('exit', (code) => reject(new Error(`server exited ${code}`)));
    });
    const apiserver = `https://127.0.0.1:${upstreamPort}`;
    // Two clusters with an agent process each: c1 carries the work, c2 the neighbour's bulk.
    const agentProcs = ['c1', 'c2'].map((c) =>
      start([
        CLI, 'agent', '--server', `wss://localhost:${ports.agent}`, '--cluster', c,
        '--cert', path.join(certDir, `agent-${c}.crt`), '--key', path.join(certDir, `agent-${c}.key`), '--ca', path.join(certDir, 'ca.crt'),
        '--apiserver', apiserver, '--health-port', '0', '--log-level', 'warn',
      ]),
    );
    const admin = `http://127.0.0.1:${ports.admin}`;
    const waitClusters = async (want: (c: Array<{ name: string; agents: unknown[] }>) => boolean) => {
      for (;;) {
        const r = (await (await fetch(`${admin}/clusters`)).json()) as { clusters: Array<{ name: string; agents: unknown[] }> };
        if (want(r.clusters)) return;
        await new Promise((res) => setTimeout(res, 100));
      }
    };
    await waitClusters((cs) => ['c1', 'c2'].every((n) => cs.find((c) => c.name === n)?.agents.length === 1));

    const kt = (cluster: string): Route => ({ kind: 'kubetunnel', proxyPort: ports.proxy!, cluster, token: TOKEN, hubCA: ca });
    const direct: Route = { kind: 'direct', port: upstreamPort };
    progress('ssh -R');
    ssh = await startSsh(dir, upstreamPort, [await freePort(), await freePort()]).catch((err: unknown) => {
      progress(`ssh -R unavailable: ${String(err)}`);
      return undefined;
    });
    const routes: Array<[string, Route]> = [['direct', direct], ['kubetunnel', kt('c1')]];
    if (ssh) routes.push(['ssh -R', { kind: 'ssh', port: ssh.ports[0]! }]);

    const results: Record<string, unknown> = {};
    const base = { upstreamCA: ca };

    progress(`bulk: ${scale.bulkBytes >> 20} MiB x ${scale.bulkRuns} per path`);
    const bulk: Record<string, ReturnType<typeof summary>> = {};
    for (const [name, route] of routes) {
      const r = (await client({ ...base, job: 'bulk', route, bytes: scale.bulkBytes, runs: scale.bulkRuns })) as { mbps: number[] };
      bulk[name] = summary(r.mbps);
      progress(`  ${name}: ${bulk[name]!.median.toFixed(0)} MB/s`);
    }
    results.bulk = bulk;

    progress(`small requests: ${scale.small} sequential GETs per path`);
    const small: Record<string, unknown> = {};
    for (const [name, route] of routes) {
      small[name] = await client({ ...base, job: 'small', route, count: scale.small });
      progress(`  ${name}: ${JSON.stringify(small[name])}`);
    }
    results.small = small;

    progress(`connection setup: ${scale.setup} per path`);
    const setup: Record<string, unknown> = {};
    for (const [name, route] of routes) {
      setup[name] = await client({ ...base, job: 'setup', route, count: scale.setup });
      progress(`  ${name}: ${JSON.stringify(setup[name])}`);
    }
    results.setup = setup;

    progress('fairness: small requests beside a bulk download, same tunnel vs another tunnel');
    const fairness: Record<string, unknown> = {
      kubetunnel: {
        sameTunnel: await client({ ...base, job: 'probe', route: kt('c1'), bulkRoute: kt('c1'), count: scale.probe }),
        otherTunnel: await client({ ...base, job: 'probe', route: kt('c1'), bulkRoute: kt('c2'), count: scale.probe }),
      },
    };
    if (ssh) {
      const s0: Route = { kind: 'ssh', port: ssh.ports[0]! };
      const s1: Route = { kind: 'ssh', port: ssh.ports[1]! };
      fairness['ssh -R'] = {
        sameTunnel: await client({ ...base, job: 'probe', route: s0, bulkRoute: s0, count: scale.probe }),
        otherTunnel: await client({ ...base, job: 'probe', route: s0, bulkRoute: s1, count: scale.probe }),
      };
    }
    progress(`  ${JSON.stringify(fairness)}`);
    results.fairness = fairness;

    progress(`slow reader: ${scale.slowBytes >> 20} MiB of a 1 GiB download at 1 MiB/s, beside small requests`);
    const rssBefore = { server: rssOf(server.pid!), agent: rssOf(agentProcs[0]!.pid!) };
    const slowJob = client({ ...base, job: 'slow', route: kt('c1'), bulkRoute: kt('c1'), bytes: scale.slowBytes, rate: 1 << 20 });
    let peak = { ...rssBefore };
    const sampler = setInterval(() => {
      peak = { server: Math.max(peak.server, rssOf(server.pid!)), agent: Math.max(peak.agent, rssOf(agentProcs[0]!.pid!)) };
    }, 200);
    const slow = await slowJob;
    clearInterval(sampler);
    results.slowReader = { ...slow, rssBefore, rssPeak: peak, growth: { server: peak.server - rssBefore.server, agent: peak.agent - rssBefore.agent } };
    progress(`  ${JSON.stringify(results.slowReader)}`);

    progress(`many agents: ${scale.agents} agent sessions`);
    const before = rssOf(server.pid!);
    const half = Math.ceil(scale.agents / 2);
    const agentsProcs = [half, scale.agents - half].map((n, i) =>
      start(
        [path.join(DIST, 'agents.js'), JSON.stringify({ server: `wss://localhost:${ports.agent}`, certDir, clusters: ['many'], perCluster: n, apiserver, idPrefix: `p${i}-` })],
        { stdin: true },
      ),
    );
    const t0 = performance.now();
    await Promise.all(agentsProcs.map((p) => line(p, (o) => o.ready === true, 'many agents')));
    await waitClusters((cs) => (cs.find((c) => c.name === 'many')?.agents.length ?? 0) >= scale.agents);
    results.manyAgents = { agents: scale.agents, registeredInMs: Math.round(performance.now() - t0), serverRss: rssOf(server.pid!), serverRssBefore: before };
    progress(`  ${JSON.stringify(results.manyAgents)}`);
    for (const p of agentsProcs) p.stdin!.end();
    await Promise.all(agentsProcs.map((p) => once(p, 'exit')));

    progress(`many streams: ${scale.streams} open CONNECT streams across ${scale.streamClusters} clusters`);
    const manyAgents = start(
      [path.join(DIST, 'agents.js'), JSON.stringify({ server: `wss://localhost:${ports.agent}`, certDir, clusters: clusters.slice(2), perCluster: 1, apiserver })],
      { stdin: true },
    );
    await line(manyAgents, (o) => o.ready === true, 'agents for many streams');
    const serverRss0 = rssOf(server.pid!);
    const hold = start([path.join(DIST, 'client.js'), JSON.stringify({ ...base, job: 'hold', route: kt('c1'), clusters, count: scale.streams })], { stdin: true });
    const held = await line<{ open: number; failed: number }>(hold, (o) => o.ready === true, 'hold');
    const serverRss1 = rssOf(server.pid!);
    results.manyStreams = { streams: scale.streams, clusters: scale.streamClusters, open: held.open, failed: held.failed, serverRss: serverRss1, bytesPerStream: Math.round((serverRss1 - serverRss0) / Math.max(1, held.open)) };
    progress(`  ${JSON.stringify(results.manyStreams)}`);
    hold.stdin!.end();
    await once(hold, 'exit');
    manyAgents.stdin!.end();
    await once(manyAgents, 'exit');

    const report = {
      date: new Date().toISOString(),
      quick,
      machine: { cpus: `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'unknown'}`, memoryGiB: Math.round(os.totalmem() / 2 ** 30), node: process.version },
      ssh: ssh ? ssh.version : 'unavailable',
      results,
    };
    const out = path.join(ROOT, 'bench/results', quick ? 'quick.json' : 'latest.json');
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, JSON.stringify(report, null, 2) + '\n');
    progress(`wrote ${path.relative(ROOT, out)}`);
    if (!quick) {
      writeReport(path.join(ROOT, 'docs/benchmarks.md'), report);
      progress('updated docs/benchmarks.md');
    }
  } finally {
    ssh?.stop();
    for (const c of children) c.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    for (const c of children) c.kill();
    process.exit(1);
  },
);
