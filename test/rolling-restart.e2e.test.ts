/**
 * Restarts under load lose nothing. Three `kubetunnel server` processes
 * behind HAProxy (TCP; clients health-checked on /readyz, agents on /livez), three clusters with two
 * agents each (all separate processes, agents dialing through HAProxy),
 * steady load through HAProxy: short requests, 1 MB downloads and watches.
 * Then a rolling restart of the servers, a rolling restart of the agents,
 * and a kill -9 of one server.
 *
 * HA_SCALE=full runs it longer and heavier (npm run test:ha).
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCA, issueServerCert } from '@kubetunnel/shared';
import { startStandinApiserver, type StandinApiserver } from '@kubetunnel/standin-apiserver';
import { type Proc, type ServerProc, cli, startServerProc, tmpDir } from './harness.js';
import { HAProxy, RefusedError, agentProc, freePorts, readBody, viaHub, waitForMesh, type HubRoute, type MemberRoute } from './ha.js';

const FULL = process.env.HA_SCALE === 'full';
const CLUSTERS = ['ha-1', 'ha-2', 'ha-3'];
const AGENTS_PER_CLUSTER = 2;
const SERVERS = 3;
const REQUEST_INTERVAL_MS = 20; // about 50 short requests a second per cluster
const DOWNLOAD = 1024 * 1024;

let dir: string;
let certDir: string;
let haproxy: HAProxy;
let hub: HubRoute;
const ports: Array<{ proxy: number; agent: number; health: number; admin: number }> = [];
const servers: Array<ServerProc | undefined> = [];
const members = new Map<string, { apiserver: StandinApiserver; caFile: string; route: MemberRoute }>();
const agents = new Map<string, Proc>();
let generation = 0;
/** What the test is doing now, for the failure list. */
let phase = 'steady';

const expectedAgents = () => {
  const m = new Map<string, string[]>();
  for (const id of agents.keys()) {
    const cluster = id.slice(0, id.lastIndexOf('-a'));
    m.set(cluster, [...(m.get(cluster) ?? []), id]);
  }
  return m;
};
const adminUrls = () => servers.filter((s): s is ServerProc => s !== undefined).map((s) => s.adminUrl);

async function startServer(i: number): Promise<void> {
  servers[i] = await startServerProc(
    certDir,
    [
      '--token-file', path.join(dir, 'tokens.csv'), '--server-id', `server-${i}`, '--server-count', String(SERVERS),
      '--shutdown-delay', '1s', '--grace-period', '5s', '--registration-grace', '5s',
    ],
    ports[i],
  );
}

function startAgent(cluster: string, slot: number): void {
  const m = members.get(cluster)!;
  const id = `${cluster}-a${slot}g${generation++}`;
  agents.set(id, agentProc({ certDir, balancerPort: hubAgentPort, cluster, agentId: id, apiserverUrl: m.apiserver.url, apiserverCAFile: m.caFile }));
}

let hubAgentPort: number;

beforeAll(async () => {
  dir = tmpDir();
  certDir = path.join(dir, 'certs');
  await cli('certs', 'init', '--dir', certDir);
  fs.writeFileSync(path.join(dir, 'tokens.csv'), 'ha-token,controller,1\n');
  const free = await freePorts(SERVERS * 4 + 2);
  for (let i = 0; i < SERVERS; i++) ports.push({ proxy: free[i * 4]!, agent: free[i * 4 + 1]!, health: free[i * 4 + 2]!, admin: free[i * 4 + 3]! });
  const [hubProxyPort, agentPort] = free.slice(SERVERS * 4);
  hubAgentPort = agentPort!;
  for (let i = 0; i < SERVERS; i++) await startServer(i);
  haproxy = await HAProxy.start(dir, [
    // Clients go to ready replicas; agents to live ones (a replica is ready
    // only once its agents have had time to come back).
    { name: 'proxy', port: hubProxyPort!, checkPath: '/readyz', backends: ports.map((p, i) => ({ name: `s${i}`, port: p.proxy, healthPort: p.health })) },
    { name: 'agents', port: hubAgentPort, checkPath: '/livez', backends: ports.map((p, i) => ({ name: `s${i}`, port: p.agent, healthPort: p.health })) },
  ]);
  hub = { port: hubProxyPort!, hubCA: fs.readFileSync(path.join(certDir, 'ca.crt'), 'utf8'), token: 'ha-token' };
  for (const cluster of CLUSTERS) {
    const ca = createCA({ commonName: `${cluster} CA` });
    const cert = issueServerCert(ca, { sans: ['kubernetes.default.svc', '127.0.0.1'] });
    const caFile = path.join(dir, `${cluster}-ca.crt`);
    fs.writeFileSync(caFile, ca.cert);
    const apiserver = await startStandinApiserver({ cluster, cert: cert.cert, key: cert.key, tokens: { 'member-token': { user: 'controller', groups: [] } } });
    members.set(cluster, { apiserver, caFile, route: { cluster, memberCA: ca.cert, memberToken: 'member-token' } });
    await cli('certs', 'agent', '--dir', certDir, '--cluster', cluster);
    for (let a = 0; a < AGENTS_PER_CLUSTER; a++) startAgent(cluster, a);
  }
  await waitForMesh(adminUrls(), expectedAgents());
  await haproxy.waitAllUp('proxy-servers');
});

afterAll(async () => {
  for (const a of agents.values()) await a.stop();
  for (const s of servers) await s?.proc.stop();
  await haproxy?.stop();
  for (const m of members.values()) await m.apiserver.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

interface Tally {
  ok: number;
  failed: string[];
  retried: number;
  downloads: { complete: number; errors: number; corrupt: number };
  watches: { started: number; ended: number };
}

/** Rejects if `p` has not settled within `ms` (a hung client is a failure, not a hang of the test). */
async function within<T>(ms: number, p: Promise<T>, what: string, onTimeout?: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          onTimeout?.();
          reject(new Error(`${what} hung for ${ms} ms`));
        }, ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Steady load on every cluster until stopped: short requests, downloads, one watch each. */
function load(): { stop(): Promise<Tally> } {
  const t: Tally = { ok: 0, failed: [], retried: 0, downloads: { complete: 0, errors: 0, corrupt: 0 }, watches: { started: 0, ended: 0 } };
  let running = true;
  const inFlight = new Set<Promise<unknown>>();
  const track = (p: Promise<unknown>) => {
    inFlight.add(p);
    void p.finally(() => inFlight.delete(p));
  };
  const short = async (m: MemberRoute) => {
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await within(15_000, viaHub(hub, m, '/version'), 'CONNECT');
        const body = await within(15_000, readBody(res), 'the answer', () => res.destroy());
        if (res.statusCode !== 200 || (JSON.parse(body.toString()) as { cluster: string }).cluster !== m.cluster) throw new Error(`answer ${res.statusCode}`);
        t.ok++;
        return;
      } catch (err) {
        // A client may retry, once, a refusal that says when to come back.
        if (err instanceof RefusedError && err.status === 503 && err.retryAfter !== undefined && attempt === 0) {
          t.retried++;
          await new Promise((r) => setTimeout(r, err.retryAfter! * 1000));
          continue;
        }
        t.failed.push(`${phase}: ${m.cluster}: ${(err as Error).message}`);
        return;
      }
    }
  };
  const timers: NodeJS.Timeout[] = [];
  const loops: Array<Promise<void>> = [];
  for (const { route } of members.values()) {
    timers.push(setInterval(() => track(short(route)), REQUEST_INTERVAL_MS));
    loops.push(
      (async () => {
        while (running) {
          try {
            const res = await within(15_000, viaHub(hub, route, `/standin/bytes/${DOWNLOAD}`), 'CONNECT');
            const body = await within(30_000, readBody(res), 'the download', () => res.destroy());
            if (body.length !== DOWNLOAD || body.some((b, i) => b !== i % 251)) t.downloads.corrupt++;
            else t.downloads.complete++;
          } catch {
            t.downloads.errors++;
          }
        }
      })(),
      (async () => {
        while (running) {
          try {
            const res = await within(15_000, viaHub(hub, route, '/api/v1/namespaces?watch=1'), 'CONNECT');
            t.watches.started++;
            const stopped = new Promise<void>((resolve) => {
              const check = setInterval(() => !running && (clearInterval(check), res.destroy(), resolve()), 50);
              res.once('close', () => (clearInterval(check), resolve()));
            });
            res.resume();
            await stopped;
            if (running) t.watches.ended++;
          } catch {
            if (running) t.watches.ended++;
            await new Promise((r) => setTimeout(r, 100));
          }
        }
      })(),
    );
  }
  return {
    async stop() {
      running = false;
      for (const timer of timers) clearInterval(timer);
      await Promise.all(loops);
      await Promise.all(inFlight);
      return t;
    },
  };
}

describe('restarts under load', () => {
  it('a rolling restart of the servers, then of every agent: zero failed short requests', async () => {
    const running = load();
    for (let round = 0; round < (FULL ? 3 : 1); round++) {
      for (let i = 0; i < SERVERS; i++) {
        phase = `restarting server ${i}`;
        await servers[i]!.proc.stop('SIGTERM');
        servers[i] = undefined;
        await startServer(i);
        await waitForMesh(adminUrls(), expectedAgents());
        // As a rolling update does, the next replica stops once this one is ready.
        await haproxy.waitAllUp('proxy-servers');
        console.log(`server ${i} restarted, ready, and every agent is back on it`);
      }
      for (const [id, proc] of [...agents]) {
        const cluster = id.slice(0, id.lastIndexOf('-a'));
        const slot = Number(/-a(\d+)g/.exec(id)![1]);
        agents.delete(id);
        phase = `restarting agent ${id}`;
        await proc.stop('SIGTERM');
        startAgent(cluster, slot);
        await waitForMesh(adminUrls(), expectedAgents());
        console.log(`agent ${id} replaced; the new one is on every server`);
      }
    }
    const t = await within(60_000, running.stop(), 'stopping the load');
    console.log(`rolling restarts: ${t.ok} short requests ok, ${t.failed.length} failed, ${t.retried} retried once after 503; downloads ${JSON.stringify(t.downloads)}; watches ${JSON.stringify(t.watches)}`);
    expect(t.failed).toEqual([]);
    expect(t.ok).toBeGreaterThan(100);
    expect(t.downloads.corrupt).toBe(0);
    expect(t.downloads.complete).toBeGreaterThan(0);
  }, 300_000);

  it('kill -9 of one server: every cluster answers through the others within 5 s', async () => {
    const victim = 1;
    const killedAt = Date.now();
    await servers[victim]!.proc.stop('SIGKILL');
    servers[victim] = undefined;
    const recovered = await Promise.all(
      [...members.values()].map(async ({ route }) => {
        for (;;) {
          try {
            const res = await viaHub(hub, route, '/version');
            await readBody(res);
            if (res.statusCode === 200) return Date.now() - killedAt;
          } catch {
            // Streams on the killed server fail; try again.
          }
          if (Date.now() - killedAt > 5000) return Infinity;
        }
      }),
    );
    console.log(`kill -9: clusters answered again after ${recovered.join(', ')} ms`);
    expect(Math.max(...recovered)).toBeLessThan(5000);
    await startServer(victim);
    await waitForMesh(adminUrls(), expectedAgents());
  }, 120_000);
});
