/**
 * `kubetunnel server --workers 2`: two data-path processes on the same ports,
 * each a replica with its own server id. Every agent holds a tunnel to both
 * workers, so CONNECT and L7 work whichever worker a client lands on; the
 * primary's admin port merges the workers' clusters and metrics; a worker
 * that dies is started again; SIGTERM drains both; a worker that cannot
 * start stops the server with its error, once.
 */
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type Member, Proc, type ServerProc, cli, expectIdle, rawConnect, run, startL7Member, startServerProc, stopMembers, tmpDir } from './harness.js';

const TOKENS = 'admin-token,admin,1,"system:masters"\n';
const CLUSTERS = ['member-1', 'member-2'];
const WORKER_IDS = ['hub-w0', 'hub-w1'];

interface Merged {
  serverId: string;
  workers: string[];
  clusters: Array<{ name: string; openStreams: number; agents: Array<{ id: string; serverId: string }> }>;
}

let dir: string;
let certDir: string;
let server: ServerProc;
let hubCA: string;
const members = new Map<string, Member>();

const merged = async (): Promise<Merged> => (await (await fetch(`${server.adminUrl}/clusters`)).json()) as Merged;

/** Waits until `check` holds of the merged /clusters report (asked again every 50 ms, up to `withinMs`). */
async function untilClusters(check: (r: Merged) => boolean, what: string, withinMs = 20_000): Promise<Merged> {
  const deadline = Date.now() + withinMs;
  for (;;) {
    const r = await merged();
    if (check(r)) return r;
    if (Date.now() > deadline) throw new Error(`not within ${withinMs} ms: ${what}; last /clusters: ${JSON.stringify(r)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Every cluster has a tunnel on every worker. */
const everyAgentOnEveryWorker = (r: Merged) =>
  CLUSTERS.every((name) => {
    const c = r.clusters.find((x) => x.name === name);
    return c !== undefined && WORKER_IDS.every((id) => c.agents.some((a) => a.serverId === id));
  });

beforeAll(async () => {
  dir = tmpDir();
  certDir = path.join(dir, 'certs');
  await cli('certs', 'init', '--dir', certDir);
  hubCA = fs.readFileSync(path.join(certDir, 'ca.crt'), 'utf8');
  fs.writeFileSync(path.join(dir, 'tokens.csv'), TOKENS);
  server = await startServerProc(certDir, ['--token-file', path.join(dir, 'tokens.csv'), '--server-id', 'hub', '--workers', '2']);
  for (const name of CLUSTERS)
    members.set(name, await startL7Member({ dir, certDir, server, name }));
  await untilClusters(everyAgentOnEveryWorker, 'every agent on both workers');
}, 60_000);

afterAll(async () => {
  await stopMembers(server, members.values());
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('kubetunnel server --workers 2', () => {
  // Every test but the last (which stops the server) leaves no stream open.
  afterEach(async () => {
    if (server.proc.child.exitCode === null) await expectIdle(server.adminUrl);
  });

  it('each worker is a replica of its own: every agent holds a tunnel to both, and /clusters shows them together', async () => {
    const r = await merged();
    expect(r.serverId).toBe('hub');
    expect([...r.workers].sort()).toEqual(WORKER_IDS);
    for (const name of CLUSTERS) {
      const c = r.clusters.find((x) => x.name === name)!;
      expect(c.agents.map((a) => a.serverId).sort()).toEqual(WORKER_IDS);
    }
    const status = await cli('status', '--admin', server.adminUrl);
    expect(status).toMatch(/^server hub: 2 cluster\(s\)/);
    expect(status.match(/connected/g)?.length).toBe(4);
    expect((await fetch(`http://127.0.0.1:${server.health}/readyz`)).status).toBe(200);
  });

  it('CONNECT and L7 requests succeed whichever worker takes the connection', async () => {
    // New connections go to the workers in turn: of 8, each worker takes some.
    for (let i = 0; i < 8; i++) {
      const cluster = CLUSTERS[i % 2]!;
      const r = await rawConnect(server.proxy, `CONNECT ${cluster}:443 HTTP/1.1\r\nHost: ${cluster}:443\r\nProxy-Authorization: Bearer admin-token\r\n\r\n`, { ca: hubCA });
      expect(r.status, r.head).toBe(200);
      const out = await run('curl', [
        '-sS', '--fail-with-body', '--cacert', path.join(certDir, 'ca.crt'),
        '-H', 'Authorization: Bearer admin-token',
        `https://127.0.0.1:${server.proxy}/clusters/${cluster}/version`,
      ]);
      expect((JSON.parse(out) as { cluster: string }).cluster).toBe(cluster);
    }
  });

  it('/metrics adds up the workers', async () => {
    const text = await (await fetch(`${server.adminUrl}/metrics`)).text();
    const value = (re: RegExp) => Number(re.exec(text)?.[1]);
    // One tunnel per worker for each cluster: 2 in all.
    for (const name of CLUSTERS) expect(value(new RegExp(`^kubetunnel_agents\\{cluster="${name}"\\} (\\d+)$`, 'm'))).toBe(2);
    expect(value(/^konnectivity_network_proxy_server_ready_backend_connections (\d+)$/m)).toBe(4);
    expect(value(/^kubetunnel_workers\{state="up"\} (\d+)$/m)).toBe(2);
    // The 16 streams of the test before, whichever worker carried them.
    const connect = value(/^kubetunnel_streams_total\{frontend="connect"\} (\d+)$/m);
    const l7 = value(/^kubetunnel_streams_total\{frontend="l7"\} (\d+)$/m);
    expect(connect).toBe(8);
    expect(l7).toBe(8);
  });

  it('a worker that dies is started again, and agents come back to it', async () => {
    const up = server.proc.lines.filter((l) => l.msg === 'worker up' && l.worker === 1);
    const pid = Number(up[up.length - 1]!.workerPid);
    const before = up.length;
    process.kill(pid, 'SIGKILL');
    await server.proc.waitFor((l) => l.msg === 'worker died; starting it again' && l.worker === 1, 'the restart');
    let n = 0;
    await server.proc.waitFor((l) => l.msg === 'worker up' && l.worker === 1 && ++n > before, 'worker 1 up again');
    await untilClusters(everyAgentOnEveryWorker, 'every agent on both workers again');
    const text = await (await fetch(`${server.adminUrl}/metrics`)).text();
    expect(text).toMatch(/^kubetunnel_worker_restarts_total 1$/m);
  });

  it('new certificate files reach every worker', async () => {
    const fingerprint = async () => {
      const s = tls.connect({ host: '127.0.0.1', port: server.proxy, ca: hubCA, servername: 'localhost' });
      await once(s, 'secureConnect');
      const f = s.getPeerCertificate().fingerprint256;
      s.destroy();
      return f;
    };
    const old = await fingerprint();
    await cli('certs', 'init', '--dir', certDir); // keeps the CAs, writes a new server certificate
    // Connections go to the workers in turn: 8 in a row with the new certificate means both reloaded.
    const deadline = Date.now() + 20_000;
    let fresh = 0;
    while (fresh < 8) {
      if (Date.now() > deadline) throw new Error('not every worker serves the new certificate within 20 s');
      if ((await fingerprint()) !== old) fresh++;
      else {
        fresh = 0;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  });

  it('SIGTERM drains both workers and the server exits 0', async () => {
    server.proc.child.kill('SIGTERM');
    expect(await server.proc.exited).toBe(0);
    const stopped = server.proc.lines.filter((l) => l.msg === 'server stopped').map((l) => l.worker);
    expect(stopped.sort()).toEqual([0, 1]);
    expect(server.proc.count((l) => typeof l.msg === 'string' && l.msg.startsWith('draining:'))).toBe(2);
    expect(server.proc.lines.find((l) => l.msg === 'workers stopped')).toMatchObject({ workers: 2, failed: 0 });
  });
});

describe('workers that cannot start', () => {
  it('a port in use: the server exits 1 with the error, printed once', async () => {
    const busy = net.createServer();
    busy.listen(0, '127.0.0.1');
    await new Promise((resolve) => busy.once('listening', resolve));
    const port = (busy.address() as net.AddressInfo).port;
    const proc = new Proc([
      'server', '--cert', path.join(certDir, 'server.crt'), '--key', path.join(certDir, 'server.key'),
      '--client-ca', path.join(certDir, 'client-ca.crt'), '--bind-address', '127.0.0.1',
      '--proxy-port', String(port), '--agent-port', '0', '--health-port', '0', '--admin-port', '0', '--workers', '2',
    ]);
    const code = await proc.exited;
    busy.close();
    expect(code).toBe(1);
    const stderr = proc.stderr.join('');
    expect(stderr.match(/EADDRINUSE/g)?.length, stderr).toBe(1);
    expect(stderr).toMatch(/^kubetunnel server: .*EADDRINUSE.*another process has that port/m);
    expect(proc.count((l) => l.msg === 'worker died; starting it again')).toBe(0);
  });

  it('a bad --workers value is refused before any worker starts', async () => {
    const proc = new Proc([
      'server', '--cert', path.join(certDir, 'server.crt'), '--key', path.join(certDir, 'server.key'),
      '--client-ca', path.join(certDir, 'client-ca.crt'), '--workers', '0',
    ]);
    expect(await proc.exited).toBe(2);
    expect(proc.stderr.join('')).toBe('kubetunnel server: --workers: want a whole number from 1 to 1024, got "0"\n');
  });

  it('without --workers the server is one process, as before: its own id, no workers', async () => {
    const one = await startServerProc(certDir, ['--server-id', 'solo']);
    try {
      const r = (await (await fetch(`${one.adminUrl}/clusters`)).json()) as Record<string, unknown>;
      expect(r).toEqual({ serverId: 'solo', clusters: [] });
      expect(one.proc.count((l) => l.msg === 'worker up')).toBe(0);
    } finally {
      expect(await one.proc.stop()).toBe(0);
    }
  });
});
