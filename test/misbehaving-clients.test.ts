/**
 * Misbehaving clients against a `kubetunnel server` process, with one agent
 * per cluster and a stand-in apiserver: thousands of idle TCP connections,
 * connections that never send a ClientHello or never finish the handshake,
 * handshakes that never send a request, request heads a byte at a time on
 * every listener, idle keep-alive connections, and many dials that hang.
 * The listeners' limits apply, the server's RSS stays bounded, and a normal
 * client (curl through CONNECT) is served all along; its latency is reported.
 *
 * Timeouts are short here (flags) so that the suite runs quickly.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  ROOT,
  type Member,
  type Proc,
  type ServerProc,
  cli,
  clustersJson,
  expectIdle,
  run,
  startAgentProc,
  startMember,
  startServerProc,
  stopMembers,
  tmpDir,
} from './harness.js';

const MEMBER_TOKEN = 'member-token';
/** --handshake-timeout and --header-timeout of the servers under test. */
const TIMEOUT_MS = 3000;
/** --idle-timeout of server A (Node's own keep-alive default is 5 s). */
const IDLE_MS = 1000;
/** What a bound may be exceeded by on a busy shared machine (a generous margin, not the claim). */
const SLACK_MS = 3000;
/** Pending connections server A keeps (--max-pending-connections). */
const MAX_PENDING = 500;

let dir: string;
let certDir: string;
let hubCA: string;
let server: ServerProc;
let member: Member;
let agentHealth: number;
let dark: Proc;
let blackhole: { proc: ChildProcess; port: number; filler: net.Socket };
const report: string[] = [];
/** Every client socket a test opened, destroyed after it. */
const opened = new Set<net.Socket>();

// ---------------------------------------------------------------------------
// Helpers

interface Tracked {
  socket: net.Socket;
  opened: number;
  closed?: number;
  data: string;
  done: Promise<void>;
}

function track(socket: net.Socket): Tracked {
  opened.add(socket);
  const t: Tracked = { socket, opened: performance.now(), data: '', done: Promise.resolve() };
  socket.on('error', () => {});
  socket.on('data', (d: Buffer) => (t.data += d.toString('latin1')));
  t.done = new Promise((resolve) =>
    socket.once('close', () => {
      t.closed = performance.now();
      opened.delete(socket);
      resolve();
    }),
  );
  return t;
}

/** Resolves once every socket is closed (by the server: the tests never close them), or at the deadline. */
async function closedWithin(all: Tracked[], ms: number): Promise<{ open: number; maxLifetimeMs: number }> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([Promise.all(all.map((t) => t.done)), new Promise((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
  const open = all.filter((t) => t.closed === undefined).length;
  const maxLifetimeMs = Math.max(0, ...all.map((t) => (t.closed ?? performance.now()) - t.opened));
  return { open, maxLifetimeMs: Math.round(maxLifetimeMs) };
}

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Asks `read` again (every 50 ms, for at most `ms`) until `done` holds of its answer; resolves with the last answer. */
async function until<T>(read: () => Promise<T>, done: (v: T) => boolean, ms = 5000): Promise<T> {
  const deadline = performance.now() + ms;
  for (;;) {
    const v = await read();
    if (done(v) || performance.now() > deadline) return v;
    await pause(50);
  }
}

/** `n` TCP connections that send nothing, opened in paced batches (a flood, not a single burst). */
async function idleFlood(port: number, n: number, batch = 50, gapMs = 20): Promise<Tracked[]> {
  const all: Tracked[] = [];
  for (let i = 0; i < n; i += batch) {
    const group = Array.from({ length: Math.min(batch, n - i) }, () => track(net.connect({ port, host: '127.0.0.1' })));
    all.push(...group);
    await Promise.all(group.map((t) => Promise.race([once(t.socket, 'connect'), t.done])));
    await pause(gapMs);
  }
  for (const t of all) t.socket.resume();
  return all;
}

/** The first flight a TLS client sends (a ClientHello), captured from a client that never reaches a network. */
async function clientHello(): Promise<Buffer> {
  let client: tls.TLSSocket | undefined;
  const hello = await new Promise<Buffer>((resolve) => {
    const wire = new Duplex({
      read() {},
      write(chunk: Buffer, _enc, cb) {
        resolve(Buffer.from(chunk));
        cb();
      },
    });
    client = tls.connect({ socket: wire, servername: 'localhost', rejectUnauthorized: false });
    client.on('error', () => {});
  });
  client!.destroy();
  return hello;
}

/** A TLS connection to a hub port; its lifetime is counted from the end of the handshake. */
async function tlsConnected(port: number, extra: tls.ConnectionOptions = {}): Promise<Tracked> {
  const t = track(tls.connect({ port, host: '127.0.0.1', servername: 'localhost', ca: hubCA, ...extra }));
  await once(t.socket, 'secureConnect');
  t.opened = performance.now();
  return t;
}

/**
 * `n` TLS connections, 25 handshakes at a time (a burst of hundreds of
 * handshakes on a busy machine could outlast the short handshake timeout
 * these tests run with); `then` runs on each once it is connected.
 */
async function tlsMany(port: number, n: number, extra: tls.ConnectionOptions = {}, then?: (t: Tracked) => void): Promise<Tracked[]> {
  const all: Tracked[] = [];
  for (let i = 0; i < n; i += 25) {
    const group = await Promise.all(Array.from({ length: Math.min(25, n - i) }, () => tlsConnected(port, extra)));
    if (then) group.forEach(then);
    all.push(...group);
  }
  return all;
}

/** Writes `text` one byte every `everyMs` until the socket closes. */
function trickle(t: Tracked, text: string, everyMs = 250): void {
  let i = 0;
  const timer = setInterval(() => {
    if (t.socket.destroyed || i >= text.length) return clearInterval(timer);
    t.socket.write(text[i++]!);
  }, everyMs);
  void t.done.then(() => clearInterval(timer));
}

/** A request head that takes far longer than the header timeout at a byte per 250 ms. */
const slowHead = (first: string) => `${first}\r\nHost: x\r\nX-Padding: ${'a'.repeat(200)}\r\n\r\n`;

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Math.round(Number(m[1]) / 1024) : 0;
}

/** Samples a process's RSS every 100 ms until stopped. */
function rssSampler(pid: number): { stop(): { before: number; peak: number; after: number } } {
  const before = rssMiB(pid);
  let peak = before;
  const timer = setInterval(() => (peak = Math.max(peak, rssMiB(pid))), 100);
  return {
    stop() {
      clearInterval(timer);
      const after = rssMiB(pid);
      return { before, peak: Math.max(peak, after), after };
    },
  };
}

type Labels = Record<string, string>;

/** One sample of a Prometheus text exposition (0 when absent). */
async function metric(adminUrl: string, name: string, labels: Labels): Promise<number> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  for (const line of text.split('\n')) {
    const m = /^(\w+)\{([^}]*)\} (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...m[2]!.matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return 0;
}

const refused = (s: ServerProc, listener: string, reason: string) => metric(s.adminUrl, 'kubetunnel_connections_refused_total', { listener, reason });
const connections = (s: ServerProc, listener: string, state: 'open' | 'pending') => metric(s.adminUrl, 'kubetunnel_connections', { listener, state });

/** The normal client: curl through CONNECT to member-1's apiserver. Resolves with its latency in ms. */
async function curlVersion(proxyPort: number): Promise<number> {
  const started = performance.now();
  const out = await run('curl', [
    '-sS', '--fail', '--max-time', '20',
    '--proxy', `https://127.0.0.1:${proxyPort}`,
    '--proxy-cacert', path.join(certDir, 'ca.crt'),
    '--proxy-header', 'X-Cluster-Name: member-1',
    '--proxy-user', 'alice:good-token',
    '--cacert', member.caFile,
    '-H', `Authorization: Bearer ${MEMBER_TOKEN}`,
    'https://kubernetes.default.svc/version',
  ]);
  expect((JSON.parse(out) as { cluster: string }).cluster).toBe('member-1');
  return performance.now() - started;
}

/** Runs the normal client in a loop until stopped; every request must succeed. */
function prober(proxyPort: number): { stop(): Promise<{ ok: number; failed: string[]; p50: number; max: number }> } {
  const latencies: number[] = [];
  const failed: string[] = [];
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      try {
        latencies.push(await curlVersion(proxyPort));
      } catch (err) {
        failed.push((err as Error).message);
      }
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      const s = [...latencies].sort((a, b) => a - b);
      return { ok: s.length, failed, p50: Math.round(s[Math.floor(s.length / 2)] ?? 0), max: Math.round(s[s.length - 1] ?? 0) };
    },
  };
}

/** Runs a phase beside the prober and the RSS sampler; reports both; the normal client must never fail. */
async function phase<T>(name: string, body: () => Promise<T>): Promise<T> {
  const probe = prober(server.proxy);
  const rss = rssSampler(server.proc.child.pid!);
  let result: T;
  try {
    result = await body();
  } finally {
    const r = rss.stop();
    const p = await probe.stop();
    report.push(
      `${name}: server RSS ${r.before} -> peak ${r.peak} -> ${r.after} MiB; curl through CONNECT beside it: ${p.ok} ok, ${p.failed.length} failed, p50 ${p.p50} ms, max ${p.max} ms`,
    );
    expect(p.failed).toEqual([]);
    expect(p.ok).toBeGreaterThan(0);
    // Generous: the client's usual latency is tens of milliseconds.
    expect(p.max).toBeLessThan(10_000);
    expect(r.peak - r.before).toBeLessThan(256);
  }
  return result;
}

// ---------------------------------------------------------------------------

beforeAll(async () => {
  dir = tmpDir();
  certDir = path.join(dir, 'certs');
  await cli('certs', 'init', '--dir', certDir);
  hubCA = fs.readFileSync(path.join(certDir, 'ca.crt'), 'utf8');
  fs.writeFileSync(path.join(dir, 'tokens.csv'), 'good-token,alice,1,"developers"\n');
  server = await startServerProc(certDir, [
    '--token-file', path.join(dir, 'tokens.csv'),
    '--max-connections', '5000',
    '--max-pending-connections', String(MAX_PENDING),
    '--handshake-timeout', `${TIMEOUT_MS}ms`,
    '--header-timeout', `${TIMEOUT_MS}ms`,
    '--idle-timeout', `${IDLE_MS}ms`,
  ]);
  member = await startMember({
    dir, certDir, server, name: 'member-1',
    tokens: { [MEMBER_TOKEN]: { user: 'alice', groups: ['developers'] } },
    agentArgs: ['--header-timeout', `${TIMEOUT_MS}ms`],
  });
  agentHealth = await member.agent.listenerPort('health');

  // A target that never answers: a listener whose accept queue is full (one
  // connection it never accepts), so that further SYNs go unanswered.
  const proc = spawn('python3', ['-c', [
    'import socket, sys',
    's = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0)',
    'print(s.getsockname()[1], flush=True)',
    'sys.stdin.read()',
  ].join('\n')], { stdio: ['pipe', 'pipe', 'inherit'] });
  const [line] = (await once(proc.stdout!, 'data')) as [Buffer];
  const port = Number(line.toString().trim());
  const filler = net.connect({ port, host: '127.0.0.1' });
  await once(filler, 'connect');
  blackhole = { proc, port, filler };
  await cli('certs', 'agent', '--dir', certDir, '--cluster', 'dark');
  dark = await startAgentProc(certDir, server, 'dark', `https://127.0.0.1:${port}`, member.caFile, ['--dial-timeout', '2s']);
});

afterAll(async () => {
  for (const s of opened) s.destroy();
  await dark?.stop();
  await stopMembers(server, member ? [member] : []);
  if (blackhole) {
    blackhole.filler.destroy();
    blackhole.proc.stdin!.end();
    await once(blackhole.proc, 'exit');
  }
  fs.rmSync(dir, { recursive: true, force: true });
  // The figures, for the record.
  console.log(`misbehaving clients:\n  ${report.join('\n  ')}`);
});

afterEach(async () => {
  for (const s of opened) s.destroy();
  opened.clear();
  await expectIdle(server.adminUrl);
});

describe('misbehaving clients', () => {
  it('the normal client, alone (baseline latency)', async () => {
    const latencies: number[] = [];
    for (let i = 0; i < 5; i++) latencies.push(await curlVersion(server.proxy));
    report.push(`baseline: curl through CONNECT ${latencies.map((l) => Math.round(l)).join(', ')} ms; server RSS ${rssMiB(server.proc.child.pid!)} MiB`);
  });

  it(`3,000 idle TCP connections: at most ${MAX_PENDING} pending at once (the oldest closed first), every one closed by the handshake timeout`, async () => {
    const evictedBefore = await refused(server, 'proxy', 'max-pending');
    const timedOutBefore = await refused(server, 'proxy', 'handshake-timeout');
    let maxPending = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        maxPending = Math.max(maxPending, await connections(server, 'proxy', 'pending'));
        await pause(100);
      }
    })();
    const { flood, closed } = await phase('3,000 idle TCP connections to the proxy port', async () => {
      const flood = await idleFlood(server.proxy, 3000);
      const closed = await closedWithin(flood, TIMEOUT_MS + SLACK_MS);
      return { flood, closed };
    });
    sampling = false;
    await sampler;
    const evicted = (await refused(server, 'proxy', 'max-pending')) - evictedBefore;
    const timedOut = (await refused(server, 'proxy', 'handshake-timeout')) - timedOutBefore;
    // A flood does not flood the log: the first refusal, then a sum per interval.
    const logLines = server.proc.count((l) => l.component === 'limits' && l.listener === 'proxy');
    report.push(`  ${flood.length} connections: ${evicted} closed as the oldest pending, ${timedOut} at the handshake timeout; most pending seen ${maxPending}; longest lived ${closed.maxLifetimeMs} ms; ${logLines} log lines about them`);
    expect(logLines).toBeGreaterThan(0);
    expect(logLines).toBeLessThanOrEqual(5);
    expect(closed.open).toBe(0);
    expect(closed.maxLifetimeMs).toBeLessThan(TIMEOUT_MS + SLACK_MS);
    expect(maxPending).toBeLessThanOrEqual(MAX_PENDING);
    expect(evicted).toBeGreaterThanOrEqual(2000);
    expect(evicted + timedOut).toBeGreaterThanOrEqual(flood.length);
    expect(await connections(server, 'proxy', 'pending')).toBe(0);
  });

  it('a ClientHello and then nothing, on the proxy and agent ports: closed at the handshake timeout', async () => {
    const hello = await clientHello();
    const before = { proxy: await refused(server, 'proxy', 'handshake-timeout'), agent: await refused(server, 'agent', 'handshake-timeout') };
    const closed = await phase('200 + 200 unfinished TLS handshakes (proxy, agent ports)', async () => {
      const all: Tracked[] = [];
      for (const port of [server.proxy, server.agent]) {
        for (let i = 0; i < 200; i++) {
          const t = track(net.connect({ port, host: '127.0.0.1' }));
          t.socket.once('connect', () => t.socket.write(hello));
          t.socket.resume();
          all.push(t);
        }
      }
      return closedWithin(all, TIMEOUT_MS + SLACK_MS);
    });
    report.push(`  longest lived ${closed.maxLifetimeMs} ms`);
    expect(closed.open).toBe(0);
    expect(closed.maxLifetimeMs).toBeLessThan(TIMEOUT_MS + SLACK_MS);
    expect((await refused(server, 'proxy', 'handshake-timeout')) - before.proxy).toBeGreaterThanOrEqual(200);
    expect((await refused(server, 'agent', 'handshake-timeout')) - before.agent).toBeGreaterThanOrEqual(200);
  });

  it('a finished handshake and no request, on the proxy and agent ports: 408 and closed at the header timeout', async () => {
    const agentCert = {
      cert: fs.readFileSync(path.join(certDir, 'agent-member-1.crt'), 'utf8'),
      key: fs.readFileSync(path.join(certDir, 'agent-member-1.key'), 'utf8'),
    };
    const before = { proxy: await refused(server, 'proxy', 'header-timeout'), agent: await refused(server, 'agent', 'header-timeout') };
    const { all, closed } = await phase('200 + 50 silent TLS connections (proxy, agent ports)', async () => {
      const all = [...(await tlsMany(server.proxy, 200)), ...(await tlsMany(server.agent, 50, agentCert))];
      return { all, closed: await closedWithin(all, TIMEOUT_MS + SLACK_MS) };
    });
    report.push(`  longest lived ${closed.maxLifetimeMs} ms after its handshake`);
    expect(closed.open).toBe(0);
    expect(closed.maxLifetimeMs).toBeLessThan(TIMEOUT_MS + SLACK_MS);
    for (const t of all) expect(t.data).toMatch(/^HTTP\/1\.1 408 /);
    expect((await refused(server, 'proxy', 'header-timeout')) - before.proxy).toBeGreaterThanOrEqual(200);
    expect((await refused(server, 'agent', 'header-timeout')) - before.agent).toBeGreaterThanOrEqual(50);
  });

  it('slow loris, a byte every 250 ms, on every listener (first request, and a second one on a keep-alive connection): 408 at the header timeout', async () => {
    const { all, closed } = await phase('slow loris on the proxy, agent, health, admin and agent health ports', async () => {
      const all: Array<{ what: string; t: Tracked }> = [];
      // First requests.
      for (let i = 0; i < 50; i++) {
        const t = await tlsConnected(server.proxy);
        trickle(t, slowHead('CONNECT member-1:443 HTTP/1.1'));
        all.push({ what: 'proxy', t });
      }
      for (const [what, port] of [['health', server.health], ['admin', server.admin], ['agent health', agentHealth]] as const) {
        for (let i = 0; i < 10; i++) {
          const t = track(net.connect({ port, host: '127.0.0.1' }));
          await once(t.socket, 'connect');
          trickle(t, slowHead('GET /healthz HTTP/1.1'));
          all.push({ what, t });
        }
      }
      // A second request on a keep-alive connection, after a first answered at once.
      for (const [what, port, secure] of [['proxy, second request', server.proxy, true], ['health, second request', server.health, false]] as const) {
        const t = secure ? await tlsConnected(port) : track(net.connect({ port, host: '127.0.0.1' }));
        if (!secure) await once(t.socket, 'connect');
        t.socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
        while (!/\r\n\r\n/.test(t.data)) await once(t.socket, 'data');
        t.data = '';
        t.opened = performance.now();
        trickle(t, slowHead('GET /healthz HTTP/1.1'));
        all.push({ what, t });
      }
      return { all, closed: await closedWithin(all.map((a) => a.t), TIMEOUT_MS + SLACK_MS) };
    });
    report.push(`  ${all.length} slow heads; longest lived ${closed.maxLifetimeMs} ms`);
    expect(closed.open).toBe(0);
    expect(closed.maxLifetimeMs).toBeLessThan(TIMEOUT_MS + SLACK_MS);
    for (const { what, t } of all) expect(`${what}: ${t.data.slice(0, 30)}`).toMatch(new RegExp(`^${what}: HTTP/1\\.1 408 `));
  });

  it('an idle keep-alive connection is closed at the idle timeout, on the proxy, health and admin ports', async () => {
    const all: Tracked[] = [];
    for (const [port, secure] of [[server.proxy, true], [server.health, false], [server.admin, false]] as const) {
      const t = secure ? await tlsConnected(port) : track(net.connect({ port, host: '127.0.0.1' }));
      if (!secure) await once(t.socket, 'connect');
      t.socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      while (!/\r\n\r\n/.test(t.data)) await once(t.socket, 'data');
      expect(t.data).not.toMatch(/connection: close/i);
      t.opened = performance.now();
      all.push(t);
    }
    const closed = await closedWithin(all, IDLE_MS + SLACK_MS);
    report.push(`idle keep-alive connections (--idle-timeout ${IDLE_MS} ms): closed after at most ${closed.maxLifetimeMs} ms idle`);
    expect(closed.open).toBe(0);
    // Node's own default would keep them 5 s.
    expect(closed.maxLifetimeMs).toBeLessThan(IDLE_MS + 2000);
  });

  it('200 dials that hang (an apiserver that never answers): each CONNECT is answered 504 at the dial timeout; other clusters are served meanwhile', async () => {
    let maxPendingDials = 0;
    const answers = await phase('200 CONNECTs to a cluster whose apiserver never answers', async () => {
      const sent = new Map<Tracked, number>();
      const connects = tlsMany(server.proxy, 200, {}, (t) => {
        t.socket.write('CONNECT dark:443 HTTP/1.1\r\nHost: dark:443\r\nProxy-Authorization: Bearer good-token\r\n\r\n');
        sent.set(t, performance.now());
      });
      const answers = connects.then((all) =>
        Promise.all(
          all.map(async (t) => {
            await t.done;
            return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(t.data)?.[1] ?? 0), ms: Math.round(t.closed! - sent.get(t)!) };
          }),
        ),
      );
      // While they wait: the server counts them as pending dials.
      let answered = false;
      void answers.then(() => (answered = true), () => (answered = true));
      while (!answered) {
        const dialing = (await clustersJson(server.adminUrl)).clusters.find((c) => c.name === 'dark')?.pendingDials ?? 0;
        maxPendingDials = Math.max(maxPendingDials, dialing);
        await pause(100);
      }
      return answers;
    });
    const slowest = Math.max(...answers.map((a) => a.ms));
    report.push(`  ${answers.length} answered ${[...new Set(answers.map((a) => a.status))].join('/')}; ${maxPendingDials} pending dials seen at once; the slowest answer ${slowest} ms after its CONNECT`);
    expect(answers.every((a) => a.status === 504)).toBe(true);
    expect(maxPendingDials).toBeGreaterThan(0);
    // The agent's --dial-timeout is 2 s.
    expect(slowest).toBeLessThan(2000 + SLACK_MS);
    const c = (await clustersJson(server.adminUrl)).clusters.find((x) => x.name === 'dark');
    expect(c?.pendingDials).toBe(0);
  });
});

it('limit flags are checked, and a bad one is refused naming the flag', async () => {
  const refuse = async (args: string[]) => {
    const err = await run(process.execPath, [path.join(ROOT, 'packages/cli/bin/kubetunnel.js'), 'server', '--cert', path.join(certDir, 'server.crt'), '--key', path.join(certDir, 'server.key'), '--ca', path.join(certDir, 'ca.crt'), ...args]).then(
      () => undefined,
      (e: Error) => e.message,
    );
    return err ?? 'accepted';
  };
  expect(await refuse(['--max-connections', '0'])).toMatch(/--max-connections: want a whole number from 1/);
  expect(await refuse(['--handshake-timeout', '5m'])).toMatch(/--handshake-timeout: want a duration above 0 and at most 120s/);
  expect(await refuse(['--header-timeout', '0s'])).toMatch(/--header-timeout: want a duration above 0/);
  expect(await refuse(['--max-pending-per-source', '-1'])).toMatch(/--max-pending-per-source: want a whole number from 0/);
});

describe('connection caps (a second server with small ones)', () => {
  let small: ServerProc;
  let smallAgent: Proc;

  beforeAll(async () => {
    // The limits come from the three sources every flag has: the command
    // line, a KUBETUNNEL_* variable and the YAML file (both key spellings).
    const config = path.join(dir, 'limits.yaml');
    fs.writeFileSync(config, 'max-pending-per-source: 5\nmaxAgentConnections: 3\n');
    process.env.KUBETUNNEL_MAX_CONNECTIONS = '30';
    try {
      small = await startServerProc(certDir, [
        '--token-file', path.join(dir, 'tokens.csv'),
        '--config', config,
        '--max-pending-connections', '20',
        '--handshake-timeout', `${TIMEOUT_MS}ms`,
        '--header-timeout', `${TIMEOUT_MS}ms`,
      ]);
    } finally {
      delete process.env.KUBETUNNEL_MAX_CONNECTIONS;
    }
    smallAgent = await startAgentProc(certDir, small, 'member-1', member.apiserver.url, member.caFile);
  });

  afterAll(async () => {
    for (const s of opened) s.destroy();
    await smallAgent?.stop();
    await small?.proc.stop();
  });

  afterEach(async () => {
    for (const s of opened) s.destroy();
    await expectIdle(small.adminUrl);
  });

  it('--max-pending-per-source: one address holds at most 5 pending connections; a new one from it closes its oldest', async () => {
    const before = await refused(small, 'proxy', 'max-pending-per-source');
    const flood = await idleFlood(small.proxy, 20, 5, 5);
    // The server accepts them a little after the client sees them connected.
    const evicted = (await until(() => refused(small, 'proxy', 'max-pending-per-source'), (n) => n - before >= 15)) - before;
    const pending = await connections(small, 'proxy', 'pending');
    report.push(`per source (--max-pending-per-source 5): 20 idle connections, ${evicted} closed as the oldest of their source, ${pending} pending`);
    expect(evicted).toBeGreaterThanOrEqual(15);
    expect(pending).toBeLessThanOrEqual(5);
    // The normal client from the same address still gets in.
    await curlVersion(small.proxy);
    const closed = await closedWithin(flood, TIMEOUT_MS + SLACK_MS);
    expect(closed.open).toBe(0);
  });

  it('--max-connections: past it a new connection is closed at once (curl fails fast, no hang); served again once connections close', async () => {
    const before = await refused(small, 'proxy', 'max-connections');
    // 30 established CONNECT tunnels: not pending, but open.
    const tunnels: Tracked[] = [];
    for (let i = 0; i < 30; i++) {
      const t = await tlsConnected(small.proxy);
      t.socket.write('CONNECT member-1:443 HTTP/1.1\r\nHost: member-1:443\r\nProxy-Authorization: Bearer good-token\r\n\r\n');
      while (!/\r\n\r\n/.test(t.data)) await once(t.socket, 'data');
      expect(t.data).toMatch(/^HTTP\/1\.1 200 /);
      tunnels.push(t);
    }
    const started = performance.now();
    const err = await curlVersion(small.proxy).then(
      () => undefined,
      (e: Error) => e,
    );
    const failedInMs = Math.round(performance.now() - started);
    report.push(`--max-connections 30: with 30 tunnels open, curl failed in ${failedInMs} ms: ${(err && /curl: \(\d+\)[^\n]*/.exec(err.message)?.[0]) ?? 'it did not fail'}`);
    expect(err).toBeInstanceOf(Error);
    expect(failedInMs).toBeLessThan(5000);
    expect((await refused(small, 'proxy', 'max-connections')) - before).toBeGreaterThanOrEqual(1);

    for (const t of tunnels) t.socket.destroy();
    await Promise.all(tunnels.map((t) => t.done));
    await expectIdle(small.adminUrl);
    await curlVersion(small.proxy);
  });

  it('--max-agent-connections: past it a new connection to the agent port is closed at accept; the registered agent keeps serving', async () => {
    const before = await refused(small, 'agent', 'max-connections');
    // The agent holds 1 of the 3; 2 more are accepted, the other 8 closed at accept.
    const flood = await idleFlood(small.agent, 10, 10, 0);
    const dropped = (await until(() => refused(small, 'agent', 'max-connections'), (n) => n - before >= 8)) - before;
    report.push(`--max-agent-connections 3: 10 idle connections to the agent port beside 1 agent, ${dropped} closed at accept`);
    expect(dropped).toBe(8);
    await curlVersion(small.proxy);
    const closed = await closedWithin(flood, TIMEOUT_MS + SLACK_MS);
    expect(closed.open).toBe(0);
  });
});
