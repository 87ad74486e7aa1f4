// Keep-alive GET /version, direct to a stand-in apiserver and through the hub's
// L7 frontend: hub, agent and stand-in are separate processes; this process is
// the client. Usage: node scripts/measure-l7.mjs [seconds per run, default 5]
// Prints p50/p99 latency and requests/s at 1 and 64 concurrent connections.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import net from 'node:net';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';

const ROOT = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const CLI = path.join(ROOT, 'packages/cli/bin/kubetunnel.js');
const seconds = Number(process.argv[2] ?? 5);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'measure-l7-'));
const procs = [];

/** Starts a process and resolves with its JSON log lines as they come. */
function start(args, what) {
  const p = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(p);
  const waiters = [];
  const rls = [p.stdout, p.stderr].map((s) => readline.createInterface({ input: s }));
  for (const rl of rls)
    rl.on('line', (line) => {
      if (process.env.DEBUG) console.error(what, line.slice(0, 200));
      let l;
      try { l = JSON.parse(line); } catch { l = { text: line }; }
      for (const w of [...waiters]) if (w.pred(l)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(l); }
    });
  p.on('exit', (code) => { if (code) console.error(`${what} exited ${code}`); });
  // Once started, its logs are drained unread (parsing them would take the client's CPU).
  const quiet = () => { for (const rl of rls) rl.close(); p.stdout.resume(); p.stderr.resume(); };
  return { proc: p, quiet, waitFor: (pred) => new Promise((resolve) => waiters.push({ pred, resolve })) };
}

const run = (...args) => new Promise((resolve, reject) => {
  const p = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, stdio: 'ignore' });
  p.on('exit', (c) => (c === 0 ? resolve() : reject(new Error(`${args[0]} failed`))));
});

// The stand-in apiserver in a process of its own.
const standinScript = path.join(dir, 'standin.mjs');
fs.writeFileSync(standinScript, `
import { startStandinApiserver } from '@kubetunnel/standin-apiserver';
import { createCA, issueServerCert } from '@kubetunnel/shared';
import fs from 'node:fs';
const ca = createCA({ commonName: 'member CA' });
const cert = issueServerCert(ca, { sans: ['localhost', '127.0.0.1'] });
fs.writeFileSync(process.argv[2], ca.cert);
const api = await startStandinApiserver({ cluster: 'member-1', cert: cert.cert, key: cert.key,
  tokens: { 'agent-token': { user: 'agent', groups: [] }, 'direct-token': { user: 'admin', groups: ['system:masters'] } },
  impersonators: ['agent'] });
console.log(JSON.stringify({ port: api.port }));
`);
fs.copyFileSync(standinScript, path.join(ROOT, 'scripts', '.standin-measure.mjs'));
const memberCA = path.join(dir, 'member-ca.crt');
const standin = start([path.join(ROOT, 'scripts', '.standin-measure.mjs'), memberCA], 'stand-in');
console.error('starting');
const apiPort = (await standin.waitFor((l) => typeof l.port === 'number')).port;
fs.rmSync(path.join(ROOT, 'scripts', '.standin-measure.mjs'));

const certDir = path.join(dir, 'certs');
await run('certs', 'init', '--dir', certDir);
await run('certs', 'agent', '--dir', certDir, '--cluster', 'member-1');
fs.writeFileSync(path.join(dir, 'tokens.csv'), 'hub-token,admin,1,"system:masters"\n');
fs.writeFileSync(path.join(dir, 'agent-token'), 'agent-token\n');
/** A port free now (the script's own processes take it a moment later). */
async function freePort() {
  const srv = net.createServer().listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  srv.close();
  return port;
}
const [proxyPort, agentPort, adminPort] = [await freePort(), await freePort(), await freePort()];
const server = start([CLI, 'server', '--cert', path.join(certDir, 'server.crt'), '--key', path.join(certDir, 'server.key'),
  '--client-ca', path.join(certDir, 'client-ca.crt'), '--bind-address', '127.0.0.1', '--proxy-port', String(proxyPort), '--agent-port', String(agentPort),
  '--health-port', '0', '--admin-port', String(adminPort), '--registration-grace', '0s', '--log-level', 'warn',
  '--token-file', path.join(dir, 'tokens.csv')], 'server');
/** Resolves once the admin endpoint lists `cluster` with a live agent. */
async function registered(cluster) {
  for (;;) {
    try {
      const res = await fetch(`http://127.0.0.1:${adminPort}/clusters`);
      const body = await res.json();
      if (body.clusters?.some((c) => c.name === cluster)) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
}
const agentProc = start([CLI, 'agent', '--server', `wss://localhost:${agentPort}`, '--cluster', 'member-1', '--cert', path.join(certDir, 'agent-member-1.crt'),
  '--key', path.join(certDir, 'agent-member-1.key'), '--ca', path.join(certDir, 'ca.crt'), '--apiserver', `https://localhost:${apiPort}`,
  '--apiserver-ca', memberCA, '--apiserver-token-file', path.join(dir, 'agent-token'), '--health-port', '0',
  '--health-bind-address', '127.0.0.1'], 'agent');
await registered('member-1');
console.error('registered');
for (const p of [standin, server, agentProc]) p.quiet();

/** `connections` keep-alive connections each sending GET after GET for `seconds`. */
async function load(name, target, connections) {
  const agent = new https.Agent({ keepAlive: true, maxSockets: connections, ca: target.ca });
  const get = () => new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port: target.port, path: target.path, servername: 'localhost', agent,
      headers: { authorization: `Bearer ${target.token}` } }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`status ${res.statusCode}`))));
    });
    req.on('error', reject);
  });
  for (let i = 0; i < 50; i++) await Promise.all(Array.from({ length: connections }, get)); // warm up
  const lat = [];
  const until = performance.now() + seconds * 1000;
  const started = performance.now();
  await Promise.all(Array.from({ length: connections }, async () => {
    while (performance.now() < until) {
      const t = performance.now();
      await get();
      lat.push(performance.now() - t);
    }
  }));
  const elapsed = (performance.now() - started) / 1000;
  agent.destroy();
  lat.sort((a, b) => a - b);
  const q = (p) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))].toFixed(2);
  const rps = Math.round(lat.length / elapsed);
  console.log(`${name.padEnd(8)} c=${String(connections).padEnd(3)} ${String(rps).padStart(6)} req/s  p50 ${q(0.5)} ms  p99 ${q(0.99)} ms`);
  return rps;
}

const direct = { port: apiPort, path: '/version', token: 'direct-token', ca: fs.readFileSync(memberCA) };
const l7 = { port: proxyPort, path: '/clusters/member-1/version', token: 'hub-token', ca: fs.readFileSync(path.join(certDir, 'ca.crt')) };
try {
  for (const c of [1, 64]) {
    const d = await load('direct', direct, c);
    const h = await load('l7', l7, c);
    console.log(`l7/direct at c=${c}: ${(h / d).toFixed(2)}x`);
  }
  const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  console.log('tunnel streams opened:', metrics.split('\n').filter((l) => /^kubetunnel_streams_total/.test(l)).join('; '));
} finally {
  for (const p of procs) p.kill();
  fs.rmSync(dir, { recursive: true, force: true });
}
