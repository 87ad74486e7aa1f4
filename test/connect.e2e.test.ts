/**
 * CONNECT mode end to end: `kubetunnel server` and `kubetunnel agent` as
 * separate processes, stand-in member apiservers, and real kubectl and curl.
 */
import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import tls from 'node:tls';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import {
  type Member,
  type ServerProc,
  CLI,
  cli,
  execFileP,
  clustersJson,
  expectIdle,
  hubTokensIn,
  rawConnect,
  run,
  startMember as startMemberProc,
  startServerProc,
  stopMembers,
  tmpDir,
} from './harness.js';

const TOKENS = 'good-token,alice,1,"developers"\n';
const MEMBER_TOKEN = 'member-token';

let dir: string;
let certDir: string;
let server: ServerProc;
const members = new Map<string, Member>();
let hubCA: string;
let clientCA: string;

const startMember = async (name: string) =>
  members.set(
    name,
    await startMemberProc({
      dir,
      certDir,
      server,
      name,
      tokens: { [MEMBER_TOKEN]: { user: 'alice', groups: ['developers'] } },
      // Client certificates from the kubetunnel client CA are trusted end to end (kubectl presents the same one to both).
      ca: clientCA,
    }),
  );

beforeAll(async () => {
  dir = tmpDir();
  certDir = path.join(dir, 'certs');
  await cli('certs', 'init', '--dir', certDir);
  await cli('certs', 'client', '--dir', certDir, '--user', 'alice', '--group', 'developers');
  hubCA = fs.readFileSync(path.join(certDir, 'ca.crt'), 'utf8');
  clientCA = fs.readFileSync(path.join(certDir, 'client-ca.crt'), 'utf8');
  fs.writeFileSync(path.join(dir, 'tokens.csv'), TOKENS);
  server = await startServerProc(certDir, ['--token-file', path.join(dir, 'tokens.csv')]);
  await startMember('member-1');
  await startMember('member-2');
});

afterAll(async () => {
  await stopMembers(server, members.values());
  fs.rmSync(dir, { recursive: true, force: true });
});

afterEach(() => expectIdle(server.adminUrl));

/** TLS options presenting `<name>.crt` from the test CA, trusting the hub. */
function tlsIdentity(name: string): { ca: string; cert: string; key: string } {
  return {
    ca: hubCA,
    cert: fs.readFileSync(path.join(certDir, `${name}.crt`), 'utf8'),
    key: fs.readFileSync(path.join(certDir, `${name}.key`), 'utf8'),
  };
}

/** `kubetunnel kubeconfig` with the given credentials; its file, and what it said on stderr. */
async function kubeconfigWith(name: string, args: string[]): Promise<{ file: string; stderr: string }> {
  const file = path.join(dir, `kubeconfig-${name}`);
  const { stderr } = await execFileP(process.execPath, [
    CLI,
    'kubeconfig',
    '--server', `https://127.0.0.1:${server.proxy}`,
    '--ca', path.join(certDir, 'ca.crt'),
    ...args,
    '--mode', 'connect',
    '--admin', server.adminUrl,
    '--out', file,
  ]);
  return { file, stderr };
}

async function kubeconfig(mode: 'connect', creds: 'token' | 'cert'): Promise<string> {
  const credArgs =
    creds === 'token'
      ? ['--token', 'good-token', '--member-token', MEMBER_TOKEN]
      : ['--client-cert', path.join(certDir, 'client-alice.crt'), '--client-key', path.join(certDir, 'client-alice.key')];
  return (await kubeconfigWith(`${mode}-${creds}`, credArgs)).file;
}

const kubectl = (kc: string, ...args: string[]) => run('kubectl', ['--kubeconfig', kc, ...args]);

describe('CONNECT mode with real clients', () => {
  it('kubectl reaches each member cluster through the hub (token at the hub, token at the member)', async () => {
    const kc = await kubeconfig('connect', 'token');
    for (const name of ['member-1', 'member-2']) {
      const out = JSON.parse(await kubectl(kc, '--context', name, 'get', '--raw', '/version')) as { cluster: string };
      expect(out.cluster).toBe(name);
    }
    const ns = await kubectl(kc, '--context', 'member-2', 'get', 'namespaces', '-o', 'name');
    expect(ns).toContain('namespace/member-2-apps');
  });

  it('the kubeconfig: cluster and hub token in the proxy URL, kubernetes.default.svc, no tls-server-name, hub CA + member CA', async () => {
    const { file, stderr } = await kubeconfigWith('connect-token-shape', ['--token', 'good-token', '--member-token', MEMBER_TOKEN]);
    const kc = parseYaml(fs.readFileSync(file, 'utf8'));
    for (const name of ['member-1', 'member-2']) {
      const c = kc.clusters.find((x: { name: string }) => x.name === name).cluster;
      expect(c.server).toBe('https://kubernetes.default.svc');
      expect(c['proxy-url']).toBe(`https://${name}:good-token@127.0.0.1:${server.proxy}`);
      expect(c['tls-server-name']).toBeUndefined();
      const bundle = Buffer.from(c['certificate-authority-data'], 'base64').toString();
      expect(bundle).toBe(hubCA.trimEnd() + '\n' + fs.readFileSync(members.get(name)!.caFile, 'utf8'));
      // Each member CA's fingerprint is printed, with where it came from.
      const fp = new X509Certificate(fs.readFileSync(members.get(name)!.caFile)).fingerprint256;
      expect(stderr).toContain(`${name}: apiserver CA SHA256 ${fp} (as its agent reported it; check it, or pin it with --member-ca ${name}=FILE)`);
    }
    expect(kc.users).toEqual([{ name: 'kubetunnel-connect', user: { token: MEMBER_TOKEN } }]);
  });

  it('the member apiservers get the member token, never the hub token (the teardown checks every request)', async () => {
    const kc = await kubeconfig('connect', 'token');
    const m1 = members.get('member-1')!;
    const before = m1.credentials.length;
    await kubectl(kc, '--context', 'member-1', 'get', 'namespaces', '-o', 'name');
    const got = m1.credentials.slice(before);
    expect(got.length).toBeGreaterThan(0);
    expect(new Set(got)).toEqual(new Set([`Bearer ${MEMBER_TOKEN}`]));
    expect(hubTokensIn(got, ['good-token'])).toEqual([]);
  });

  it('without a member credential the kubeconfig is still written, says so, and the member sees no hub token', async () => {
    const { file, stderr } = await kubeconfigWith('connect-no-member', ['--token', 'good-token']);
    expect(stderr).toMatch(/note: no member credential .* the kubeconfig is written without one/);
    const text = fs.readFileSync(file, 'utf8');
    expect(text).toMatch(/^# kubetunnel: the CONNECT contexts carry no member credential/);
    expect(parseYaml(text).users).toEqual([{ name: 'kubetunnel-connect', user: {} }]);
    // kubectl, finding no credential for the user, asks for one (stdin is empty here) ...
    const child = spawn('kubectl', ['--kubeconfig', file, '--context', 'member-2', 'get', 'namespaces'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    const [code] = (await once(child, 'exit')) as [number];
    expect(code).not.toBe(0);
    expect(out).toMatch(/Please enter Username/);
    // ... and one given on the command line goes to the member, through the hub, with the hub token only in the proxy URL.
    const m2 = members.get('member-2')!;
    const before = m2.credentials.length;
    expect(JSON.parse(await kubectl(file, '--context', 'member-2', '--token', MEMBER_TOKEN, 'get', '--raw', '/version')).cluster).toBe('member-2');
    expect(new Set(m2.credentials.slice(before))).toEqual(new Set([`Bearer ${MEMBER_TOKEN}`]));
    expect(hubTokensIn(m2.credentials, ['good-token'])).toEqual([]);
  });

  it('--member-ca pins a member CA: the agent-reported one is not used, and a wrong pin fails verification', async () => {
    const m1 = members.get('member-1')!;
    const m2 = members.get('member-2')!;
    const good = await kubeconfigWith('connect-pinned', ['--token', 'good-token', '--member-token', MEMBER_TOKEN, '--member-ca', `member-1=${m1.caFile}`]);
    expect(good.stderr).toContain(`member-1: apiserver CA SHA256 ${new X509Certificate(fs.readFileSync(m1.caFile)).fingerprint256} (pinned from ${m1.caFile})`);
    expect(JSON.parse(await kubectl(good.file, '--context', 'member-1', 'get', '--raw', '/version')).cluster).toBe('member-1');
    const wrong = await kubeconfigWith('connect-wrong-pin', ['--token', 'good-token', '--member-token', MEMBER_TOKEN, '--member-ca', `member-1=${m2.caFile}`]);
    await expect(kubectl(wrong.file, '--context', 'member-1', 'get', '--raw', '/version')).rejects.toThrow(/x509: certificate signed by unknown authority/);
  });

  it('--member-token is never the hub token; --out onto an existing 0644 file leaves it 0600', async () => {
    await expect(kubeconfigWith('connect-same', ['--token', 'good-token', '--member-token', 'good-token'])).rejects.toThrow(
      /--member-token: is the hub token/,
    );
    const file = path.join(dir, 'kubeconfig-connect-mode');
    fs.writeFileSync(file, 'previous contents\n', { mode: 0o644 });
    fs.chmodSync(file, 0o644);
    await kubeconfigWith('connect-mode', ['--client-cert', path.join(certDir, 'client-alice.crt'), '--client-key', path.join(certDir, 'client-alice.key')]);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(file, 'utf8')).toContain('client-key-data');
  });

  it('kubectl with a client certificate: the hub and the member both authenticate it', async () => {
    const kc = await kubeconfig('connect', 'cert');
    const out = JSON.parse(await kubectl(kc, '--context', 'member-1', 'get', '--raw', '/version')) as { cluster: string };
    expect(out.cluster).toBe('member-1');
    const who = await kubectl(kc, '--context', 'member-1', 'auth', 'whoami', '-o', 'json');
    expect(JSON.parse(who).status.userInfo.username).toBe('alice');
  });

  it('curl reaches a cluster named by X-Cluster-Name', async () => {
    const m2 = members.get('member-2')!;
    const caFile = path.join(certDir, 'ca.crt');
    const out = await run('curl', [
      '-sS', '--fail',
      '--proxy', `https://127.0.0.1:${server.proxy}`,
      '--proxy-cacert', caFile,
      '--proxy-header', 'X-Cluster-Name: member-2',
      '--proxy-user', 'alice:good-token',
      '--cacert', m2.caFile,
      '-H', `Authorization: Bearer ${MEMBER_TOKEN}`,
      'https://kubernetes.default.svc/version',
    ]);
    expect(JSON.parse(out).cluster).toBe('member-2');
  });

  it('curl names the cluster the way kubectl does: the Basic user name of the proxy credentials', async () => {
    const m1 = members.get('member-1')!;
    const out = await run('curl', [
      '-sS', '--fail',
      '--proxy', `https://127.0.0.1:${server.proxy}`,
      '--proxy-cacert', path.join(certDir, 'ca.crt'),
      '--proxy-user', 'member-1:good-token',
      '--cacert', m1.caFile,
      '-H', `Authorization: Bearer ${MEMBER_TOKEN}`,
      'https://kubernetes.default.svc/version',
    ]);
    expect(JSON.parse(out).cluster).toBe('member-1');
  });

  it('a chunked watch streams each event as it happens', async () => {
    const kc = await kubeconfig('connect', 'token');
    const m1 = members.get('member-1')!;
    const watch = spawn('kubectl', ['--kubeconfig', kc, '--context', 'member-1', 'get', '--raw', '/api/v1/namespaces?watch=1']);
    let out = '';
    const seen = (text: string) =>
      new Promise<void>((resolve, reject) => {
        const check = () => out.includes(text) && resolve();
        watch.stdout.on('data', (c: Buffer) => {
          out += c.toString();
          check();
        });
        watch.on('exit', (code) => reject(new Error(`kubectl exited ${code} before "${text}"`)));
        check();
      });
    await seen('"kube-system"');
    // Added after the watch started: it must arrive while the watch is open.
    m1.apiserver.addNamespace('added-during-watch');
    await seen('added-during-watch');
    expect(watch.exitCode).toBeNull();
    watch.kill();
    await new Promise((r) => watch.once('exit', r));
    m1.apiserver.deleteNamespace('added-during-watch');
  });
});

describe('CONNECT bad input: exact status, one-line reason, nothing else disturbed', () => {
  const caOpts = () => ({ ca: hubCA });
  const connect = (target: string, headers: string[] = ['Proxy-Authorization: Bearer good-token']) =>
    rawConnect(server.proxy, `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n${headers.map((h) => h + '\r\n').join('')}\r\n`, caOpts());

  it('unknown cluster: 404', async () => {
    const r = await connect('nowhere:443', ['Proxy-Authorization: Bearer good-token', 'X-Cluster-Name: nowhere']);
    expect(r.status).toBe(404);
    expect(r.body).toMatch(/unknown cluster "nowhere"\n$/);
  });

  it('no credential, a wrong token, or an agent certificate: 407 with Proxy-Authenticate', async () => {
    for (const headers of [[], ['Proxy-Authorization: Bearer wrong-token'], ['Proxy-Authorization: Basic ' + Buffer.from('alice:nope').toString('base64')]]) {
      const r = await connect('member-1:443', headers);
      expect(r.status).toBe(407);
      expect(r.head).toMatch(/\r\nProxy-Authenticate: Basic realm="kubetunnel"/);
    }
    const agentCert = tlsIdentity('agent-member-1');
    const r = await rawConnect(server.proxy, 'CONNECT member-1:443 HTTP/1.1\r\nHost: member-1:443\r\n\r\n', agentCert);
    expect(r.status).toBe(407);
    expect(r.body).toMatch(/agent certificates are refused/);
  });

  it('basic auth with the token as password is accepted (what kubectl sends for proxy-url userinfo)', async () => {
    const r = await connect('member-1:443', ['Proxy-Authorization: Basic ' + Buffer.from('anyone:good-token').toString('base64')]);
    expect(r.status).toBe(200);
  });

  it.each([
    ['spaces', 'member 1'],
    ['uppercase', 'Member-1'],
    ['over 63 characters', 'm'.repeat(64)],
    ['a dot', 'member-1.evil'],
  ])('X-Cluster-Name with %s: 400', async (_what, name) => {
    const r = await connect('member-1:443', ['Proxy-Authorization: Bearer good-token', `X-Cluster-Name: ${name}`]);
    expect(r.status).toBe(400);
    expect(r.body).toMatch(/invalid X-Cluster-Name/);
  });

  it('X-Cluster-Name with CR or LF inside: 400', async () => {
    for (const raw of ['X-Cluster-Name: mem\rber-1', 'X-Cluster-Name: member-1\r\n\tcontinued']) {
      const r = await connect('member-1:443', ['Proxy-Authorization: Bearer good-token', raw]);
      expect(r.status).toBe(400);
    }
  });

  it.each([['no port', 'member-1'], ['empty host', ':443'], ['port out of range', 'member-1:70000'], ['junk', 'a/b:443']])(
    'malformed CONNECT target (%s): 400',
    async (_what, target) => {
      const r = await connect(target);
      expect(r.status).toBe(400);
      expect(r.body.trim().split('\n')).toHaveLength(1);
    },
  );

  it('oversize headers: 431', async () => {
    const r = await connect('member-1:443', ['Proxy-Authorization: Bearer good-token', `X-Pad: ${'a'.repeat(20_000)}`]);
    expect(r.status).toBe(431);
  });

  it('a client certificate on the agent gateway is refused', async () => {
    const clientCert = tlsIdentity('client-alice');
    const r = await rawConnect(server.agent, upgradeRequest('member-1'), clientCert);
    expect(r.status).toBe(403);
    expect(r.body).toMatch(/not an agent certificate/);
  });

  it("an agent certificate for member-1 registering as member-2 is refused; both clusters still work", async () => {
    const agentCert = tlsIdentity('agent-member-1');
    const r = await rawConnect(server.agent, upgradeRequest('member-2'), agentCert);
    expect(r.status).toBe(403);
    expect(r.body).toMatch(/certificate is for cluster member-1, not member-2/);
    const state = await clustersJson(server.adminUrl);
    expect(state.clusters.find((c) => c.name === 'member-2')!.agents.map((a) => a.id)).not.toContain('impostor');
    const kc = await kubeconfig('connect', 'token');
    for (const name of ['member-1', 'member-2'])
      expect(JSON.parse(await kubectl(kc, '--context', name, 'get', '--raw', '/version')).cluster).toBe(name);
  });

  it('a CONNECT to a host:port no agent allows goes to the apiserver, nowhere else', async () => {
    const r = await rawConnectThenTls('10.1.2.3:22', 'member-1');
    expect(r).toBe('member-1');
  });
});

function upgradeRequest(cluster: string): string {
  return [
    'GET /connect HTTP/1.1',
    'Host: localhost',
    'Connection: Upgrade',
    'Upgrade: websocket',
    'Sec-WebSocket-Version: 13',
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
    'Sec-WebSocket-Protocol: kubetunnel.v1',
    `X-Kubetunnel-Cluster: ${cluster}`,
    'X-Kubetunnel-Agent-Id: impostor',
    '',
    '',
  ].join('\r\n');
}

/** CONNECT to `target` for `cluster`, then TLS and GET /version inside: which cluster answered. */
async function rawConnectThenTls(target: string, cluster: string): Promise<string> {
  const outer = tls.connect({ host: '127.0.0.1', port: server.proxy, ca: hubCA, servername: 'localhost' });
  await once(outer, 'secureConnect');
  outer.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\nX-Cluster-Name: ${cluster}\r\nProxy-Authorization: Bearer good-token\r\n\r\n`);
  const [head] = (await once(outer, 'data')) as [Buffer];
  expect(head.toString()).toMatch(/^HTTP\/1\.1 200 /);
  const inner = tls.connect({ socket: outer, servername: 'kubernetes.default.svc', ca: fs.readFileSync(members.get(cluster)!.caFile) });
  await once(inner, 'secureConnect');
  inner.write(`GET /version HTTP/1.1\r\nHost: kubernetes.default.svc\r\nAuthorization: Bearer ${MEMBER_TOKEN}\r\nConnection: close\r\n\r\n`);
  let body = '';
  inner.setEncoding('utf8');
  for await (const c of inner) body += c;
  return (JSON.parse(body.slice(body.indexOf('{'))) as { cluster: string }).cluster;
}
