/**
 * Replica discovery by DNS: an agent given `--server dns:///NAME:PORT` keeps
 * one tunnel per address NAME resolves to, and follows a scale from two
 * replicas to three and back with no failed request. The test serves the
 * DNS answers itself (a UDP DNS server on 127.0.0.1); each replica is a
 * `kubetunnel server` process on its own loopback address, same agent port.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import dns2 from 'dns2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCA, issueServerCert } from '@kubetunnel/shared';
import { startStandinApiserver, type StandinApiserver } from '@kubetunnel/standin-apiserver';
import { Proc, type ServerProc, cli, clustersJson, rawConnect, startServerProc, tmpDir } from './harness.js';

const NAME = 'kubetunnel-server.test';
const ADDRESSES = ['127.0.0.2', '127.0.0.3', '127.0.0.4'];

let dir: string;
let certDir: string;
let hubCA: string;
let agentPort: number;
let dnsAnswer: string[] = [];
let dnsServer: ReturnType<typeof dns2.createServer>;
let dnsPort: number;
let apiserver: StandinApiserver;
let agent: Proc;
const servers = new Map<string, ServerProc>();

/** A port free on every replica address (servers must share it: DNS carries no port). */
async function commonFreePort(): Promise<number> {
  for (;;) {
    const probe = net.createServer().listen(0, ADDRESSES[0]);
    await new Promise((r) => probe.once('listening', r));
    const port = (probe.address() as net.AddressInfo).port;
    const rest = await Promise.all(
      ADDRESSES.slice(1).map(
        (a) =>
          new Promise<net.Server | undefined>((resolve) => {
            const s = net.createServer();
            s.once('error', () => resolve(undefined));
            s.listen(port, a, () => resolve(s));
          }),
      ),
    );
    await Promise.all([probe, ...rest].map((s) => s && new Promise((r) => s.close(r))));
    if (rest.every(Boolean)) return port;
  }
}

async function startReplica(address: string): Promise<ServerProc> {
  const s = await startServerProc(certDir, ['--bind-address', address, '--server-id', `replica-${address}`, '--token-file', path.join(dir, 'tokens.csv')], { agent: agentPort });
  servers.set(address, s);
  return s;
}

/** Resolves once the server at `address` has the agent registered. */
async function agentOn(address: string): Promise<void> {
  await servers.get(address)!.proc.waitFor((l) => l.msg === 'agent registered' && l.cluster === 'member-1', `the agent on ${address}`);
}

beforeAll(async () => {
  dir = tmpDir();
  certDir = path.join(dir, 'certs');
  await cli('certs', 'init', '--dir', certDir, '--san', NAME);
  await cli('certs', 'agent', '--dir', certDir, '--cluster', 'member-1');
  hubCA = fs.readFileSync(path.join(certDir, 'ca.crt'), 'utf8');
  fs.writeFileSync(path.join(dir, 'tokens.csv'), 't,alice,1\n');

  dnsServer = dns2.createServer({
    udp: true,
    handle: (request, send) => {
      const response = dns2.Packet.createResponseFromRequest(request);
      const [q] = request.questions;
      if (q && q.name.toLowerCase() === NAME && q.type === dns2.Packet.TYPE.A)
        for (const address of dnsAnswer) response.answers.push({ name: q.name, type: dns2.Packet.TYPE.A, class: dns2.Packet.CLASS.IN, ttl: 1, address } as unknown as dns2.Packet.Resource);
      send(response);
    },
  });
  const bound = await dnsServer.listen({ udp: { port: 0, address: '127.0.0.1' } });
  dnsPort = (bound as { udp: net.AddressInfo }).udp.port;

  agentPort = await commonFreePort();
  const ca = createCA({ commonName: 'member-1 CA' });
  const cert = issueServerCert(ca, { sans: ['127.0.0.1'] });
  fs.writeFileSync(path.join(dir, 'member-ca.crt'), ca.cert);
  apiserver = await startStandinApiserver({ cluster: 'member-1', cert: cert.cert, key: cert.key, tokens: {} });
});

afterAll(async () => {
  if (process.env.DEBUG_TEST) console.log(agent?.lines.map((l) => JSON.stringify(l)).join('\n'));
  await agent?.stop();
  for (const s of servers.values()) await s.proc.stop();
  await apiserver?.close();
  await dnsServer?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('agents find replicas by DNS', () => {
  it('one tunnel per address; a scale from 2 to 3 replicas and back is followed with no failed request', async () => {
    dnsAnswer = ADDRESSES.slice(0, 2);
    await Promise.all(dnsAnswer.map(startReplica));
    agent = new Proc([
      'agent',
      '--server', `dns:///${NAME}:${agentPort}`,
      '--dns-server', `127.0.0.1:${dnsPort}`,
      '--dns-refresh', '300ms',
      '--cluster', 'member-1',
      '--cert', path.join(certDir, 'agent-member-1.crt'),
      '--key', path.join(certDir, 'agent-member-1.key'),
      '--ca', path.join(certDir, 'ca.crt'),
      '--apiserver', apiserver.url,
      '--apiserver-ca', path.join(dir, 'member-ca.crt'),
      '--health-port', '0',
      '--health-bind-address', '127.0.0.1',
    ]);
    await Promise.all(dnsAnswer.map(agentOn));

    // Steady requests through the first replica for the whole scale up and down.
    const front = servers.get(ADDRESSES[0]!)!;
    let running = true;
    const results: number[] = [];
    const load = (async () => {
      while (running) {
        const r = await rawConnect(front.proxy, 'CONNECT member-1:443 HTTP/1.1\r\nHost: member-1:443\r\nProxy-Authorization: Bearer t\r\n\r\n', { ca: hubCA, host: ADDRESSES[0] });
        results.push(r.status);
      }
    })();
    // Make sure requests are flowing before the scale begins.
    while (results.length < 5) await new Promise((r) => setTimeout(r, 20));

    // Scale up: a third replica appears in DNS and gets a tunnel.
    const third = ADDRESSES[2]!;
    await startReplica(third);
    dnsAnswer = ADDRESSES.slice();
    await agentOn(third);
    const ids = await Promise.all(ADDRESSES.map(async (a) => (await clustersJson(servers.get(a)!.adminUrl)).clusters.find((c) => c.name === 'member-1')?.agents.length));
    expect(ids).toEqual([1, 1, 1]);

    // Scale down: it leaves DNS and drains; the agent does not come back to it.
    const seen = agent.lines.length;
    dnsAnswer = ADDRESSES.slice(0, 2);
    await agent.waitFor(
      (l) => agent.lines.indexOf(l) >= seen && l.msg === 'server endpoints changed' && Array.isArray(l.endpoints) && l.endpoints.length === 2,
      'the agent sees two endpoints again',
    );
    await servers.get(third)!.proc.stop();
    servers.delete(third);
    await agent.waitFor((l) => l.msg === 'tunnel down' && l.server === `wss://${third}:${agentPort}`, 'the tunnel to the removed replica closes');
    const before = results.length;
    while (results.length < before + 10) await new Promise((r) => setTimeout(r, 20));
    running = false;
    await load;

    expect(results.filter((s) => s !== 200)).toEqual([]);
    // The agent still holds exactly one tunnel on each remaining replica, and dialed the removed one no more.
    for (const a of ADDRESSES.slice(0, 2))
      expect((await clustersJson(servers.get(a)!.adminUrl)).clusters.find((c) => c.name === 'member-1')?.agents).toHaveLength(1);
    expect(agent.count((l) => l.msg === 'could not reach server' && l.server === `wss://${third}:${agentPort}`)).toBe(0);
  });
});
