/**
 * Konnectivity AgentService end to end: an ANP proxy-agent that is not ours
 * (test/anp/agent.py, Python grpcio, the .proto compiled at run time) serves
 * a member cluster of `kubetunnel server`, reached by kubectl through
 * CONNECT and by a grpcio client through ProxyService.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createCA, issueServerCert } from '@kubetunnel/shared';
import { startStandinApiserver, type StandinApiserver } from '@kubetunnel/standin-apiserver';
import { type ServerProc, ROOT, clustersJson, cli, expectIdle, run, startServerProc, tmpDir } from './harness.js';

const PYTHON = '/usr/bin/python3';
const PROTO = path.join(ROOT, 'packages/server/proto/konnectivity.proto');
const MEMBER_TOKEN = 'member-token';
/** The hub's own credential for member-1 (--member-kubeconfig): a service account allowed to impersonate. */
const HUB_IMPERSONATOR = { token: 'hub-impersonator-token', user: 'system:serviceaccount:kubetunnel:hub' };

let dir: string;
let certDir: string;
let server: ServerProc;
let anpPort: number;
let grpcPort: number;
let apiserver: StandinApiserver;
let memberCA: string;
let memberCAFile: string;
let agents: AnpAgent[] = [];

/** The Python proxy-agent as a process; its JSON event lines can be awaited. */
class AnpAgent {
  readonly child: ChildProcess;
  readonly events: Array<Record<string, unknown>> = [];
  readonly exited: Promise<unknown>;
  private waiters: Array<() => void> = [];

  constructor(id: string, cluster: string, identifiers: string) {
    this.child = spawn(PYTHON, [
      path.join(ROOT, 'test/anp/agent.py'),
      '--proto', PROTO,
      '--target', `127.0.0.1:${anpPort}`,
      '--ca', path.join(certDir, 'ca.crt'),
      '--cert', path.join(certDir, `agent-${cluster}.crt`),
      '--key', path.join(certDir, `agent-${cluster}.key`),
      '--agent-id', id,
      '--identifiers', identifiers,
      // What the cluster's DNS would answer for the in-cluster apiserver service.
      '--resolve', `kubernetes.default.svc:443=127.0.0.1:${new URL(apiserver.url).port}`,
    ], { stdio: ['pipe', 'pipe', 'inherit'] });
    let buf = '';
    this.child.stdout!.setEncoding('utf8').on('data', (c: string) => {
      buf += c;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        this.events.push(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
        buf = buf.slice(nl + 1);
        for (const w of this.waiters.splice(0)) w();
      }
    });
    this.exited = once(this.child, 'exit');
    void this.exited.then(() => {
      for (const w of this.waiters.splice(0)) w();
    });
    agents.push(this);
  }

  async waitFor(pred: (e: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
    for (;;) {
      const e = this.events.find(pred);
      if (e) return e;
      if (this.child.exitCode !== null) throw new Error(`agent exited before the event; events: ${JSON.stringify(this.events)}`);
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  dials(): number {
    return this.events.filter((e) => e.event === 'dial').length;
  }

  drain(): void {
    this.child.stdin!.write('drain\n');
  }

  /** Ends its input (it cancels its call and exits); one that has not exited 5 s later is killed, so a stuck grpcio exit cannot hold every later test. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.stdin!.end();
    const kill = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(kill);
  }
}

/** CONNECT through the hub, TLS to the member apiserver, GET `path`; the parsed JSON answer. */
async function getViaConnect(reqPath = '/version'): Promise<{ status: number; body: { cluster?: string } }> {
  const { socket, request } = await openViaConnect();
  const answer = await request(reqPath, true);
  socket.destroy();
  return answer;
}

async function openViaConnect() {
  const hub = tls.connect({ host: '127.0.0.1', port: server.proxy, ca: fs.readFileSync(path.join(certDir, 'ca.crt')), servername: 'localhost' });
  await once(hub, 'secureConnect');
  hub.write('CONNECT member-1:443 HTTP/1.1\r\nHost: member-1:443\r\nProxy-Authorization: Bearer hub-token\r\n\r\n');
  const [head] = (await once(hub, 'data')) as [Buffer];
  expect(head.toString().split('\r\n')[0]).toBe('HTTP/1.1 200 Connection established');
  const socket = tls.connect({ socket: hub, ca: memberCA, servername: 'kubernetes.default.svc' });
  await once(socket, 'secureConnect');
  const request = (reqPath: string, close: boolean) =>
    new Promise<{ status: number; body: { cluster?: string } }>((resolve, reject) => {
      let data = '';
      const onData = (c: Buffer) => {
        data += c.toString();
        const end = data.indexOf('\r\n\r\n');
        const len = /content-length:\s*(\d+)/i.exec(data)?.[1];
        if (end >= 0 && len !== undefined && data.length >= end + 4 + Number(len)) {
          socket.off('data', onData);
          resolve({ status: Number(data.split(' ')[1]), body: JSON.parse(data.slice(end + 4, end + 4 + Number(len))) as { cluster?: string } });
        }
      };
      socket.on('data', onData);
      socket.once('error', reject);
      socket.write(
        `GET ${reqPath} HTTP/1.1\r\nHost: kubernetes.default.svc\r\nAuthorization: Bearer ${MEMBER_TOKEN}\r\nAccept: application/json\r\n${close ? 'Connection: close\r\n' : ''}\r\n`,
      );
    });
  return { socket, request };
}

beforeAll(async () => {
  dir = tmpDir();
  certDir = path.join(dir, 'certs');
  await cli('certs', 'init', '--dir', certDir);
  await cli('certs', 'agent', '--dir', certDir, '--cluster', 'member-1');
  await cli('certs', 'agent', '--dir', certDir, '--cluster', 'member-2');
  fs.writeFileSync(path.join(dir, 'tokens.csv'), 'hub-token,bob,2\n');
  const ca = createCA({ commonName: 'member-1 CA' });
  const cert = issueServerCert(ca, { sans: ['localhost', '127.0.0.1', 'kubernetes.default.svc'] });
  memberCA = ca.cert;
  memberCAFile = path.join(dir, 'member-1-ca.crt');
  fs.writeFileSync(memberCAFile, ca.cert);
  apiserver = await startStandinApiserver({
    cluster: 'member-1',
    cert: cert.cert,
    key: cert.key,
    tokens: { [MEMBER_TOKEN]: { user: 'alice', groups: [] }, [HUB_IMPERSONATOR.token]: { user: HUB_IMPERSONATOR.user, groups: [] } },
    impersonators: [HUB_IMPERSONATOR.user],
  });
  // What the hub holds for member-1: the apiserver as the ANP agent dials it (the
  // in-cluster name), its CA, and the impersonator's token (from a file beside it).
  fs.writeFileSync(path.join(dir, 'member-1.token'), HUB_IMPERSONATOR.token + '\n');
  fs.writeFileSync(
    path.join(dir, 'member-1.kubeconfig'),
    [
      'apiVersion: v1',
      'kind: Config',
      'clusters:',
      '- name: member-1',
      '  cluster:',
      '    server: https://kubernetes.default.svc',
      '    certificate-authority: member-1-ca.crt',
      'users:',
      '- name: hub',
      '  user:',
      '    tokenFile: member-1.token',
      'contexts:',
      '- name: member-1',
      '  context: {cluster: member-1, user: hub}',
      'current-context: member-1',
      '',
    ].join('\n'),
  );
  server = await startServerProc(certDir, [
    '--anp-agent-port', '0',
    '--grpc-port', '0',
    '--token-file', path.join(dir, 'tokens.csv'),
    '--server-id', 'hub-a',
    '--server-count', '3',
    '--member-kubeconfig', `member-1=${path.join(dir, 'member-1.kubeconfig')}`,
  ]);
  anpPort = await server.proc.listenerPort('anp-agent');
  grpcPort = await server.proc.listenerPort('grpc');
});

afterEach(async () => {
  for (const a of agents) await a.stop();
  agents = [];
  // Every ANP tunnel is gone once its agent has stopped.
  while ((await clustersJson(server.adminUrl)).clusters.some((c) => c.agents.length > 0)) await new Promise((r) => setTimeout(r, 20));
});

afterAll(async () => {
  await server?.proc.stop();
  await apiserver?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function registered(agentId: string): Promise<void> {
  await server.proc.waitFor((l) => l.msg === 'agent registered' && l.agentId === `anp:${agentId}`, `registration of ${agentId}`);
}

describe('ANP proxy-agents on the AgentService', () => {
  it('an ANP agent serves its cluster: serverID/serverCount answered; kubectl through CONNECT and a grpcio client through ProxyService', async () => {
    const agent = new AnpAgent('a1', 'member-1', 'host=member-1');
    expect(await agent.waitFor((e) => e.event === 'connected')).toMatchObject({ serverID: 'hub-a', serverCount: '3' });
    await registered('a1');
    expect((await clustersJson(server.adminUrl)).clusters.find((c) => c.name === 'member-1')!.agents.map((a) => a.id)).toEqual(['anp:a1']);

    const kubeconfig = path.join(dir, 'kubeconfig');
    const caData = Buffer.from(fs.readFileSync(path.join(certDir, 'ca.crt'), 'utf8') + memberCA).toString('base64');
    fs.writeFileSync(
      kubeconfig,
      [
        'apiVersion: v1',
        'kind: Config',
        'clusters:',
        '- name: member-1',
        '  cluster:',
        // The CONNECT layout `kubetunnel kubeconfig` writes: the cluster in the proxy URL's user name.
        '    server: https://kubernetes.default.svc',
        `    proxy-url: https://member-1:hub-token@127.0.0.1:${server.proxy}`,
        `    certificate-authority-data: ${caData}`,
        'users:',
        '- name: alice',
        '  user:',
        `    token: ${MEMBER_TOKEN}`,
        'contexts:',
        '- name: member-1',
        '  context: {cluster: member-1, user: alice}',
        'current-context: member-1',
        '',
      ].join('\n'),
    );
    const version = JSON.parse(await run('kubectl', ['--kubeconfig', kubeconfig, 'get', '--raw', '/version'])) as { cluster: string };
    expect(version.cluster).toBe('member-1');
    const ns = await run('kubectl', ['--kubeconfig', kubeconfig, 'get', 'namespaces', '-o', 'name']);
    expect(ns).toContain('namespace/default');

    const out = await run(PYTHON, [
      path.join(ROOT, 'test/anp/proxy_client.py'),
      '--proto', PROTO,
      '--target', `127.0.0.1:${grpcPort}`,
      '--ca', path.join(certDir, 'ca.crt'),
      '--hub-token', 'hub-token',
      '--member-ca', `member-1=${memberCAFile}`,
      '--token', MEMBER_TOKEN,
      'member-1',
    ]);
    expect((JSON.parse(out) as { status: number; body: { cluster: string } }).body.cluster).toBe('member-1');
    expect(agent.events.filter((e) => e.event === 'dial').every((e) => e.address === 'kubernetes.default.svc:443')).toBe(true);
    expect(agent.dials()).toBeGreaterThanOrEqual(3);
    await expectIdle(server.adminUrl);
  });

  it('L7 through an ANP agent: the hub speaks TLS and HTTP to the apiserver over the agent\'s dial, impersonating the caller; kubectl with the L7 kubeconfig', async () => {
    const agent = new AnpAgent('l7', 'member-1', 'host=member-1');
    await registered('l7');
    const kubeconfig = path.join(dir, 'kubeconfig-l7');
    await cli('kubeconfig', '--server', `https://127.0.0.1:${server.proxy}`, '--ca', path.join(certDir, 'ca.crt'), '--token', 'hub-token',
      '--mode', 'l7', '--clusters', 'member-1', '--admin', server.adminUrl, '--out', kubeconfig);
    const kubectl = (...args: string[]) => run('kubectl', ['--kubeconfig', kubeconfig, '--context', 'member-1-l7', ...args]);
    // The member saw the hub's caller (bob, from the hub token), impersonated by the hub's credential.
    const who = JSON.parse(await kubectl('auth', 'whoami', '-o', 'json')) as { status: { userInfo: { username: string } } };
    expect(who.status.userInfo.username).toBe('bob');
    expect((JSON.parse(await kubectl('get', '--raw', '/version')) as { cluster: string }).cluster).toBe('member-1');
    expect(await kubectl('get', 'namespaces', '-o', 'name')).toContain('namespace/default');
    // An upgrade (exec) is relayed too.
    const child = spawn('kubectl', ['--kubeconfig', kubeconfig, '--context', 'member-1-l7', 'exec', '-i', 'echo', '--', 'cat'], { stdio: ['pipe', 'pipe', 'inherit'] });
    child.stdin!.end('hello through ANP\n');
    let echoed = '';
    child.stdout!.on('data', (c: Buffer) => (echoed += c.toString()));
    const [code] = (await once(child, 'exit')) as [number];
    expect(code).toBe(0);
    expect(echoed).toBe('hello through ANP\n');
    // Every request was a TCP dial of the apiserver by the ANP agent, and nothing else.
    expect(agent.dials()).toBeGreaterThanOrEqual(4);
    expect(agent.events.filter((e) => e.event === 'dial').every((e) => e.address === 'kubernetes.default.svc:443')).toBe(true);
    await expectIdle(server.adminUrl);
  });

  it('L7 to a cluster served only by ANP agents, with no --member-kubeconfig for it: 503 saying so, at once', async () => {
    const agent = new AnpAgent('m2', 'member-2', 'host=member-2');
    await registered('m2');
    const out = await run('curl', [
      '-sS', '--cacert', path.join(certDir, 'ca.crt'), '--resolve', `localhost:${server.proxy}:127.0.0.1`,
      '-H', 'Authorization: Bearer hub-token', '-w', '\n%{http_code}', `https://localhost:${server.proxy}/clusters/member-2/version`,
    ]);
    const [body, status] = [out.slice(0, out.lastIndexOf('\n')), out.slice(out.lastIndexOf('\n') + 1)];
    expect(status).toBe('503');
    expect((JSON.parse(body) as { message: string }).message).toBe(
      'cluster "member-2" has no live agent that serves L7 requests: ANP agents dial TCP only; L7 through them needs the server\'s --member-kubeconfig member-2=FILE',
    );
    expect(agent.dials()).toBe(0);
  });

  it('an agent whose certificate is for member-1 but claims host=member-2 is refused', async () => {
    const agent = new AnpAgent('liar', 'member-1', 'host=member-1&host=member-2');
    expect(await agent.waitFor((e) => e.event === 'refused')).toMatchObject({
      code: 'PERMISSION_DENIED',
      details: 'certificate is for cluster member-1; agentIdentifiers claim host=member-2',
    });
    await server.proc.waitFor((l) => l.msg === 'ANP agent refused', 'refusal log');
    expect((await clustersJson(server.adminUrl)).clusters.flatMap((c) => c.agents.map((a) => a.id))).not.toContain('anp:liar');
  });

  it('DRAIN: the draining agent keeps its open connection, new dials go to the other agent, no request fails', async () => {
    const a1 = new AnpAgent('d1', 'member-1', 'host=member-1');
    await registered('d1');
    const a2 = new AnpAgent('d2', 'member-1', '');
    await registered('d2');
    // One connection held open on each agent (the least busy is picked; ties go to the
    // first registered): with equal loads, every new dial would go to the first.
    const held = await openViaConnect();
    const held2 = await openViaConnect();
    expect([a1.dials(), a2.dials()]).toEqual([1, 1]);
    // Requests run while the agent drains: every one answers 200.
    const results: number[] = [];
    const loop = (async () => {
      for (let i = 0; i < 6; i++) results.push((await getViaConnect()).status);
    })();
    a1.drain();
    await server.proc.waitFor((l) => l.msg === 'agent is draining' && l.agentId === 'anp:d1', 'drain log');
    await loop;
    const a1Dials = a1.dials();
    for (let i = 0; i < 6; i++) results.push((await getViaConnect()).status);
    expect(results).toEqual(new Array(12).fill(200));
    expect(a1.dials()).toBe(a1Dials);
    expect(a2.dials()).toBeGreaterThanOrEqual(7);
    // The held connection still works through the draining agent.
    expect((await held.request('/version', true)).body.cluster).toBe('member-1');
    expect((await held2.request('/version', true)).body.cluster).toBe('member-1');
    held.socket.destroy();
    held2.socket.destroy();
    await expectIdle(server.adminUrl);
  });
});
