/**
 * L7 mode end to end: one kubeconfig, the hub's identity, the agent's
 * impersonation; real kubectl against `kubetunnel server` and `kubetunnel
 * agent` processes and stand-in member apiservers.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type Member, type ServerProc, cli, expectIdle, rawConnect, run, L7_AGENT_TOKEN, l7AgentUser, startL7Member, startServerProc, stopMembers, tmpDir } from './harness.js';

const POLICY = `
rules:
  - users: [admin]
    clusters: ["*"]
  - groups: [developers]
    clusters: [member-1]
`;
const TOKENS = 'admin-token,admin,1,"system:masters,platform"\ndev-token,dev,2,"developers"\n';

let dir: string;
let certDir: string;
let server: ServerProc;
let hubCA: string;
const members = new Map<string, Member>();

beforeAll(async () => {
  dir = tmpDir();
  certDir = path.join(dir, 'certs');
  await cli('certs', 'init', '--dir', certDir);
  hubCA = fs.readFileSync(path.join(certDir, 'ca.crt'), 'utf8');
  fs.writeFileSync(path.join(dir, 'tokens.csv'), TOKENS);
  fs.writeFileSync(path.join(dir, 'policy.yaml'), POLICY);
  server = await startServerProc(certDir, ['--token-file', path.join(dir, 'tokens.csv'), '--policy', path.join(dir, 'policy.yaml')]);
  for (const name of ['member-1', 'member-2'])
    members.set(name, await startL7Member({ dir, certDir, server, name }));
});

afterAll(async () => {
  await stopMembers(server, members.values());
  // Credentials never reach the logs.
  const logs = JSON.stringify(server?.proc.lines ?? []) + [...members.values()].map((m) => JSON.stringify(m.agent.lines)).join('');
  expect(logs).not.toContain('admin-token');
  expect(logs).not.toContain('dev-token');
  expect(logs).not.toContain(L7_AGENT_TOKEN);
  fs.rmSync(dir, { recursive: true, force: true });
});

afterEach(() => expectIdle(server.adminUrl));

async function kubeconfig(token: string): Promise<string> {
  const file = path.join(dir, `kubeconfig-l7-${token}`);
  if (!fs.existsSync(file))
    await cli('kubeconfig', '--server', `https://127.0.0.1:${server.proxy}`, '--ca', path.join(certDir, 'ca.crt'),
      '--token', token, '--mode', 'l7', '--admin', server.adminUrl, '--out', file);
  return file;
}
const kubectl = async (token: string, ...args: string[]) => run('kubectl', ['--kubeconfig', await kubeconfig(token), ...args]);

describe('L7 mode with real kubectl', () => {
  it('reaches both clusters with one kubeconfig, over HTTP/2', async () => {
    for (const name of ['member-1', 'member-2']) {
      const v = JSON.parse(await kubectl('admin-token', '--context', `${name}-l7`, 'get', '--raw', '/version')) as { cluster: string };
      expect(v.cluster).toBe(name);
      // kubectl (client-go) negotiated HTTP/2 with the hub, as it does with an apiserver.
      const audited = await server.proc.waitFor((l) => l.msg === 'l7 request' && l.cluster === name && l.path === '/version', `audit of ${name}`);
      expect(audited.http).toBe('2.0');
    }
  });

  it('auth whoami shows the hub identity as the member saw it; the agent impersonated it', async () => {
    const who = JSON.parse(await kubectl('admin-token', '--context', 'member-2-l7', 'auth', 'whoami', '-o', 'json'));
    expect(who.status.userInfo.username).toBe('admin');
    expect(who.status.userInfo.groups).toEqual(['system:masters', 'platform', 'system:authenticated']);
    const last = members.get('member-2')!.apiserver.requests.filter((r) => r.path.includes('selfsubjectreviews')).pop()!;
    expect(last.user).toBe(l7AgentUser('member-2'));
    expect(last.effectiveUser).toBe('admin');
  });

  it('--as someone from a normal user does not reach the member as someone', async () => {
    const who = JSON.parse(await kubectl('dev-token', '--context', 'member-1-l7', 'auth', 'whoami', '--as', 'someone', '--as-group', 'system:masters', '-o', 'json'));
    expect(who.status.userInfo.username).toBe('dev');
    expect(who.status.userInfo.groups).not.toContain('system:masters');
  });

  it('exec with stdin echoes the bytes back', async () => {
    const kc = await kubeconfig('admin-token');
    const child = spawn('kubectl', ['--kubeconfig', kc, '--context', 'member-1-l7', 'exec', '-i', 'echo', '--', 'cat']);
    const input = randomBytes(64 * 1024).toString('base64');
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stdin.end(input);
    const [code] = await once(child, 'exit');
    expect(code).toBe(0);
    expect(out).toBe(input);
  });

  it('port-forward carries 10 MB byte-exact', async () => {
    const kc = await kubeconfig('admin-token');
    const pf = spawn('kubectl', ['--kubeconfig', kc, '--context', 'member-1-l7', 'port-forward', 'pod/echo', ':8080']);
    try {
      const port = await new Promise<number>((resolve, reject) => {
        let text = '';
        pf.stdout.setEncoding('utf8').on('data', (d: string) => {
          text += d;
          const m = /Forwarding from 127\.0\.0\.1:(\d+)/.exec(text);
          if (m) resolve(Number(m[1]));
        });
        pf.once('exit', (code) => reject(new Error(`port-forward exited ${code}`)));
      });
      const payload = randomBytes(10 << 20);
      const sock = net.connect(port, '127.0.0.1');
      await once(sock, 'connect');
      const received: Buffer[] = [];
      let n = 0;
      const all = new Promise<void>((resolve) =>
        sock.on('data', (c: Buffer) => {
          received.push(c);
          n += c.length;
          if (n >= payload.length) resolve();
        }),
      );
      sock.write(payload);
      await all;
      expect(Buffer.concat(received).equals(payload)).toBe(true);
      sock.destroy();
    } finally {
      pf.kill();
      await once(pf, 'exit');
    }
  });

  it('a watch prints events as they come', async () => {
    const kc = await kubeconfig('admin-token');
    const watch = spawn('kubectl', ['--kubeconfig', kc, '--context', 'member-2-l7', 'get', '--raw', '/api/v1/namespaces?watch=1']);
    let out = '';
    const seen = (text: string) =>
      new Promise<void>((resolve, reject) => {
        watch.once('exit', (code) => reject(new Error(`kubectl exited ${code}`)));
        const check = () => out.includes(text) && resolve();
        watch.stdout.on('data', (c: Buffer) => {
          out += c.toString();
          check();
        });
        check();
      });
    await seen('"kube-system"');
    members.get('member-2')!.apiserver.addNamespace('l7-watch-ns');
    await seen('l7-watch-ns');
    watch.kill();
    await once(watch, 'exit');
    members.get('member-2')!.apiserver.deleteNamespace('l7-watch-ns');
  });

  it('unauthenticated: 401 in the Status shape kubectl prints, logged and counted', async () => {
    await expect(kubectl('wrong-token', '--context', 'member-1-l7', 'get', '--raw', '/version')).rejects.toThrow(/Unauthorized/);
    await server.proc.waitFor((l) => l.msg === 'L7 request refused' && l.status === 401, 'the 401 in the log');
    const metrics = await (await fetch(`${server.adminUrl}/metrics`)).text();
    expect(metrics).toMatch(/kubetunnel_stream_failures_total\{frontend="l7",reason="UNAUTHENTICATED"\} [1-9]/);
  });
});

describe('policy', () => {
  it('a user allowed only member-1 gets 403 on member-2, over L7 and over CONNECT', async () => {
    expect(JSON.parse(await kubectl('dev-token', '--context', 'member-1-l7', 'get', '--raw', '/version')).cluster).toBe('member-1');
    await expect(kubectl('dev-token', '--context', 'member-2-l7', 'get', '--raw', '/version')).rejects.toThrow(
      /may not reach cluster "member-2"/,
    );
    const r = await rawConnect(
      server.proxy,
      'CONNECT member-2:443 HTTP/1.1\r\nHost: member-2:443\r\nProxy-Authorization: Bearer dev-token\r\n\r\n',
      { ca: hubCA },
    );
    expect(r.status).toBe(403);
    expect(r.body).toBe('user "dev" may not reach cluster "member-2"\n');
  });

  it('a name the user may not reach answers 403 whether or not the cluster exists (no enumeration)', async () => {
    const ask = (cluster: string, token: string) =>
      rawConnect(server.proxy, `CONNECT ${cluster}:443 HTTP/1.1\r\nHost: ${cluster}:443\r\nX-Cluster-Name: ${cluster}\r\nProxy-Authorization: Bearer ${token}\r\n\r\n`, { ca: hubCA });
    const [known, unknown] = await Promise.all([ask('member-2', 'dev-token'), ask('no-such-cluster', 'dev-token')]);
    expect([known.status, unknown.status]).toEqual([403, 403]);
    expect(unknown.body).toBe('user "dev" may not reach cluster "no-such-cluster"\n');
    // Over L7 the same.
    const l7 = await rawConnect(server.proxy, 'GET /clusters/no-such-cluster/version HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer dev-token\r\n\r\n', { ca: hubCA });
    expect(l7.status).toBe(403);
    // A user the policy allows every cluster learns that it is unknown.
    expect((await ask('no-such-cluster', 'admin-token')).status).toBe(404);
  });
});

describe('upgrades that are not answered 101', () => {
  it('an upgrade request that announces a body is refused, counted and logged like any L7 400; nothing reaches the member', async () => {
    const api = members.get('member-1')!.apiserver;
    const before = api.requests.length;
    const badRequests = async () =>
      Number(/^kubetunnel_stream_failures_total\{frontend="l7",reason="BAD_REQUEST"\} (\d+)$/m.exec(await (await fetch(`${server.adminUrl}/metrics`)).text())?.[1] ?? 0);
    const counted = await badRequests();
    for (const framing of ['Transfer-Encoding: chunked', 'Content-Length: 5']) {
      const r = await rawConnect(
        server.proxy,
        'GET /clusters/member-1/api/v1/namespaces/default/pods/echo/exec?command=cat&stdin=true HTTP/1.1\r\n' +
          `Host: hub\r\nAuthorization: Bearer admin-token\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n${framing}\r\n\r\n0\r\n\r\n`,
        { ca: hubCA },
      );
      expect(r.status).toBe(400);
      expect(r.body).toContain('an upgrade request carries no body');
    }
    expect(api.requests.length).toBe(before);
    expect(await badRequests()).toBe(counted + 2);
    await server.proc.waitFor((l) => l.msg === 'L7 request refused' && l.status === 400 && l.reason === 'an upgrade request carries no body', 'the 400 in the log');
  });


  it('deliver the answer, then close: follow-up bytes never reach the member', async () => {
    const api = members.get('member-1')!.apiserver;
    const before = api.requests.length;
    const socket = tls.connect({ host: '127.0.0.1', port: server.proxy, ca: hubCA, servername: 'localhost' });
    await once(socket, 'secureConnect');
    // An upgrade the member refuses (no such pod), and right behind it a second
    // request that must never be read by the member.
    socket.write(
      'GET /clusters/member-1/api/v1/namespaces/default/pods/nope/exec?command=sh HTTP/1.1\r\n' +
        'Host: hub\r\nAuthorization: Bearer admin-token\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n' +
        'GET /api/v1/namespaces/kube-system/secrets HTTP/1.1\r\nHost: hub\r\n\r\n',
    );
    let answer = '';
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => (answer += d));
    await once(socket, 'close');
    expect(answer).toMatch(/^HTTP\/1\.1 404 /);
    expect(answer).toMatch(/\r\nConnection: close\r\n/);
    const seen = api.requests.slice(before).map((r) => r.path);
    expect(seen.some((p) => p.includes('/pods/nope/exec'))).toBe(true);
    expect(seen.some((p) => p.includes('secrets'))).toBe(false);
  });
});
