/**
 * Independent peers: the L7 and CONNECT paths end to end against member
 * apiservers not written in Node (Python's http.server over TLS, nginx from
 * Debian's packages), beside the project's stand-in, with kubectl, curl and
 * @kubernetes/client-node as clients. The tunnel must never drop: every
 * cluster's agent session id stays the same from the first request to the
 * last. Then identity edge cases (names outside Latin-1, control characters,
 * long group lists) and zero-length writes on every stream kind.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import * as k8s from '@kubernetes/client-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createCA, issueClientCert, issueServerCert, loadClientCA } from '@kubetunnel/shared';
import { Proc, type ServerProc, cli, expectIdle, run, startAgentProc, startMember, startServerProc, tmpDir, type Member } from './harness.js';
import { headerValues, largePattern, NGINX_LARGE, startNginx, startPython, type RecordedRequest, type Upstream } from './upstreams/peers.js';

const AGENT_TOKEN = 'agent-sa-token';
const MEMBER_TOKEN = 'member-token';
const MANY_GROUPS = Array.from({ length: 2000 }, (_, i) => `g${i}`);
// 2,000 groups of 40 bytes: an OPEN of about 90 KiB, more than a peer's decoder takes.
const HUGE_GROUPS = Array.from({ length: 2000 }, (_, i) => `group-${String(i).padStart(4, '0')}-${'x'.repeat(29)}`);
const TOKENS = [
  'admin-token,admin,1,"system:masters,platform"',
  'utf8-token,开发者,2,"开发,développeurs,a b"',
  `many-token,many,3,"${MANY_GROUPS.join(',')}"`,
  `huge-token,huge,4,"${HUGE_GROUPS.join(',')}"`,
].join('\n');
const agentUser = (c: string) => `system:serviceaccount:kubetunnel:agent-${c}`;

interface Peer {
  cluster: string;
  /** Text /version answers with. */
  version: string;
  /** A namespace only this member has. */
  namespace: string;
}
const PEERS: Peer[] = [
  { cluster: 'member-standin', version: '"cluster":"member-standin"', namespace: 'member-standin-apps' },
  { cluster: 'member-python', version: 'v1.32.0-python', namespace: 'python-apps' },
  { cluster: 'member-nginx', version: 'v1.32.0-nginx', namespace: 'nginx-apps' },
];
/** The members that record what they received (kube_like.py, also behind nginx). */
const RECORDING = PEERS.filter((p) => p.cluster !== 'member-standin');

let dir: string;
let certDir: string;
let server: ServerProc;
let hubCA: string;
const stand: Member[] = [];
const agents = new Map<string, Proc>();
const upstreams = new Map<string, Upstream>();
const memberCAFile = new Map<string, string>();
/** Each cluster's agent session id when the suite started. */
const sessions = new Map<string, string>();

interface AdminClusters {
  clusters: Array<{ name: string; agents: Array<{ sessionId: string }> }>;
}
async function sessionOf(cluster: string): Promise<string> {
  const res = await fetch(`${server.adminUrl}/clusters`);
  const c = ((await res.json()) as AdminClusters).clusters.find((x) => x.name === cluster);
  return (c?.agents ?? []).map((a) => a.sessionId).join(',');
}

beforeAll(async () => {
  dir = tmpDir('kubetunnel-peers-');
  certDir = path.join(dir, 'certs');
  await cli('certs', 'init', '--dir', certDir);
  await cli('certs', 'client', '--dir', certDir, '--user', 'cert-user', '--group', '开发', '--group', 'é');
  hubCA = fs.readFileSync(path.join(certDir, 'ca.crt'), 'utf8');
  fs.writeFileSync(path.join(dir, 'tokens.csv'), TOKENS + '\n');
  fs.writeFileSync(path.join(dir, 'agent-token'), AGENT_TOKEN + '\n');
  server = await startServerProc(certDir, ['--token-file', path.join(dir, 'tokens.csv')]);
  const agentArgs = ['--apiserver-token-file', path.join(dir, 'agent-token')];

  const m = await startMember({
    dir,
    certDir,
    server,
    name: 'member-standin',
    tokens: { [AGENT_TOKEN]: { user: agentUser('member-standin'), groups: [] }, [MEMBER_TOKEN]: { user: 'alice', groups: [] } },
    impersonators: [agentUser('member-standin')],
    agentArgs,
  });
  stand.push(m);
  agents.set('member-standin', m.agent);
  memberCAFile.set('member-standin', m.caFile);

  // One CA and serving certificate for both (key generation is the slow part of the setup).
  const ca = createCA({ commonName: 'peers CA' });
  const cert = issueServerCert(ca, { sans: ['localhost', '127.0.0.1', 'kubernetes.default.svc'] });
  const caFile = path.join(dir, 'peers-ca.crt');
  fs.writeFileSync(caFile, ca.cert);
  for (const name of ['member-python', 'member-nginx']) {
    memberCAFile.set(name, caFile);
    const up =
      name === 'member-python'
        ? await startPython({ dir, name, cert: cert.cert, key: cert.key })
        : await startNginx({ dir, cert: cert.cert, key: cert.key, ca: ca.cert });
    upstreams.set(name, up);
    await cli('certs', 'agent', '--dir', certDir, '--cluster', name);
    agents.set(name, await startAgentProc(certDir, server, name, up.url, caFile, agentArgs));
  }
  for (const p of PEERS) sessions.set(p.cluster, await sessionOf(p.cluster));
});

afterAll(async () => {
  for (const a of agents.values()) await a.stop();
  await server?.proc.stop();
  for (const m of stand) await m.apiserver.close();
  for (const u of upstreams.values()) await u.stop();
  // Caller tokens never reach the logs.
  const logs = JSON.stringify(server?.proc.lines ?? []) + [...agents.values()].map((a) => JSON.stringify(a.lines)).join('');
  for (const t of ['admin-token', 'utf8-token', AGENT_TOKEN]) expect(logs).not.toContain(t);
  fs.rmSync(dir, { recursive: true, force: true });
});

afterEach(async () => {
  await expectIdle(server.adminUrl);
  // Whatever the test did, no tunnel was dropped (checked per test: the next
  // test compares with the session it starts with, once one is registered).
  const dropped: string[] = [];
  for (const p of PEERS) {
    const now = await sessionOf(p.cluster);
    if (now !== sessions.get(p.cluster)) dropped.push(`${p.cluster}: ${sessions.get(p.cluster)} -> ${now || 'none'}`);
    if (now) sessions.set(p.cluster, now);
  }
  expect(dropped, 'tunnels dropped during the test').toEqual([]);
});

async function kubeconfig(mode: 'l7' | 'connect', token = 'admin-token'): Promise<string> {
  const file = path.join(dir, `kubeconfig-${mode}-${token}`);
  if (!fs.existsSync(file))
    await cli('kubeconfig', '--server', `https://127.0.0.1:${server.proxy}`, '--ca', path.join(certDir, 'ca.crt'),
      '--token', token, ...(mode === 'connect' ? ['--member-token', MEMBER_TOKEN] : []),
      '--mode', mode, '--admin', server.adminUrl, '--out', file);
  return file;
}
const contextOf = (cluster: string, mode: 'l7' | 'connect') => (mode === 'l7' ? `${cluster}-l7` : cluster);
const kubectl = async (mode: 'l7' | 'connect', cluster: string, ...args: string[]) =>
  run('kubectl', ['--kubeconfig', await kubeconfig(mode), '--context', contextOf(cluster, mode), ...args]);

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** One L7 request to the hub (`/clusters/<cluster><path>`), a fresh connection each. */
function l7(
  cluster: string,
  reqPath: string,
  o: { token?: string; cert?: string; key?: string; method?: string; chunks?: Buffer[]; headers?: Record<string, string> } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port: server.proxy,
        path: `/clusters/${cluster}${reqPath}`,
        method: o.method ?? 'GET',
        ca: hubCA,
        servername: 'localhost',
        agent: false,
        ...(o.cert ? { cert: o.cert, key: o.key } : {}),
        headers: { ...(o.token !== undefined ? { authorization: `Bearer ${o.token}` } : o.cert ? {} : { authorization: 'Bearer admin-token' }), ...o.headers },
      },
      (res) => {
        const body: Buffer[] = [];
        res.on('data', (c: Buffer) => body.push(c));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(body) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    // The client's chunks one by one, empty ones included.
    for (const c of o.chunks ?? []) req.write(c);
    req.end();
  });
}

/** Requests the member recorded while `fn` ran. */
async function recordedDuring(cluster: string, fn: () => Promise<unknown>): Promise<RecordedRequest[]> {
  const up = upstreams.get(cluster)!;
  const before = up.requests().length;
  await fn();
  return up.requests().slice(before);
}

/** Spawns `kubectl get --raw <path>` and resolves once its output contains `text`; kills it then. */
async function kubectlUntil(mode: 'l7' | 'connect', cluster: string, rawPath: string, text: string): Promise<void> {
  const child = spawn('kubectl', ['--kubeconfig', await kubeconfig(mode), '--context', contextOf(cluster, mode), 'get', '--raw', rawPath]);
  let out = '';
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.includes(text)) resolve();
      });
      child.once('exit', (code) => (out.includes(text) ? resolve() : reject(new Error(`kubectl exited ${code} before "${text}": ${err}`))));
    });
  } finally {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill();
      await once(child, 'exit');
    }
  }
}

describe.each(PEERS)('against $cluster', (peer) => {
  it('kubectl: get --raw /version and get namespaces over L7, get --raw /version over CONNECT', async () => {
    expect(await kubectl('l7', peer.cluster, 'get', '--raw', '/version')).toContain(peer.version);
    // Discovery, then the list: what never completed when empty writes dropped the tunnel.
    expect(await kubectl('l7', peer.cluster, 'get', 'namespaces', '-o', 'name')).toContain(`namespace/${peer.namespace}`);
    expect(await kubectl('connect', peer.cluster, 'get', '--raw', '/version')).toContain(peer.version);
  });

  it('kubectl: a streaming watch delivers its events over L7 and over CONNECT', async () => {
    await kubectlUntil('l7', peer.cluster, '/api/v1/namespaces?watch=1', '"kube-system"');
    await kubectlUntil('connect', peer.cluster, '/api/v1/namespaces?watch=1', '"kube-system"');
  });

  it('curl over CONNECT (X-Cluster-Name) and over L7', async () => {
    const viaConnect = await run('curl', [
      '-sS', '--fail',
      '--proxy', `https://127.0.0.1:${server.proxy}`,
      '--proxy-cacert', path.join(certDir, 'ca.crt'),
      '--proxy-header', `X-Cluster-Name: ${peer.cluster}`,
      '--proxy-user', 'alice:admin-token',
      '--cacert', memberCAFile.get(peer.cluster)!,
      '-H', `Authorization: Bearer ${MEMBER_TOKEN}`,
      'https://kubernetes.default.svc/version',
    ]);
    expect(viaConnect).toContain(peer.version);
    const viaL7 = await run('curl', [
      '-sS', '--fail', '--cacert', path.join(certDir, 'ca.crt'), '-H', 'Authorization: Bearer admin-token',
      `https://localhost:${server.proxy}/clusters/${peer.cluster}/api/v1/namespaces`,
    ]);
    expect(JSON.parse(viaL7).items.map((n: { metadata: { name: string } }) => n.metadata.name)).toContain(peer.namespace);
  });

  it('client-node lists namespaces and reads the version over L7', async () => {
    const kc = new k8s.KubeConfig();
    kc.loadFromFile(await kubeconfig('l7'));
    kc.setCurrentContext(`${peer.cluster}-l7`);
    const list = await kc.makeApiClient(k8s.CoreV1Api).listNamespace();
    expect(list.items.map((n) => n.metadata?.name)).toContain(peer.namespace);
    const version = await kc.makeApiClient(k8s.VersionApi).getCode();
    if (peer.cluster === 'member-standin') expect(version.major).toBeTruthy();
    else expect(version.gitVersion).toBe(peer.version);
  });

  it('20 sequential and 20 concurrent L7 requests: every one 200, the tunnel never dropped', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 20; i++) statuses.push((await l7(peer.cluster, i % 2 ? '/version' : '/api/v1/namespaces')).status);
    const concurrent = await Promise.all(Array.from({ length: 20 }, (_, i) => l7(peer.cluster, i % 2 ? '/version' : '/api/v1/namespaces')));
    statuses.push(...concurrent.map((a) => a.status));
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    expect(concurrent.filter((a) => a.status === 200 && a.body.toString().includes(peer.namespace)).length).toBe(10);
  });
});

describe('HTTP/2 toward a member that offers it', () => {
  it('nginx offers h2 and http/1.1: the agent sends watches over HTTP/2, other requests over HTTP/1.1', async () => {
    const [watch, get] = await Promise.all([l7('member-nginx', '/protocol?watch=true'), l7('member-nginx', '/protocol')]);
    expect([watch.status, watch.body.toString()]).toEqual([200, 'HTTP/2.0']);
    expect([get.status, get.body.toString()]).toEqual([200, 'HTTP/1.1']);
  });
});

describe.each(RECORDING)('what $cluster received', (peer) => {
  const large = () => (peer.cluster === 'member-nginx' ? { path: '/large.bin', size: NGINX_LARGE } : { path: `/large?size=${NGINX_LARGE}`, size: NGINX_LARGE });

  it('a 1 MiB body arrives byte-exact over L7 and over CONNECT', async () => {
    const { path: p, size } = large();
    const viaL7 = await l7(peer.cluster, p);
    expect(viaL7.status).toBe(200);
    expect(viaL7.body.equals(largePattern(size))).toBe(true);
    const viaConnect = await rawConnectGet(peer.cluster, p, []);
    expect(viaConnect.equals(largePattern(size))).toBe(true);
  });

  it("impersonation headers for the caller, the agent's own token, never the caller's", async () => {
    const seen = await recordedDuring(peer.cluster, () => l7(peer.cluster, '/api/v1/namespaces?watch=1', { headers: { 'Impersonate-User': 'mallory', 'X-Remote-User': 'mallory' } }));
    expect(seen).toHaveLength(1);
    const r = seen[0]!;
    expect(headerValues(r, 'impersonate-user')).toEqual(['admin']);
    expect(headerValues(r, 'impersonate-group')).toEqual(['system:masters', 'platform']);
    expect(headerValues(r, 'authorization')).toEqual([`Bearer ${AGENT_TOKEN}`]);
    expect(headerValues(r, 'x-remote-user')).toEqual([]);
    expect(JSON.stringify(r.headers.map(([k, v]) => [k, v.toString('latin1')]))).not.toMatch(/admin-token|mallory/);
  });

  it('a user and groups outside Latin-1 (token file) arrive as their exact UTF-8 bytes', async () => {
    const seen = await recordedDuring(peer.cluster, async () => expect((await l7(peer.cluster, '/large?size=10', { token: 'utf8-token' })).status).toBe(200));
    const r = seen[0]!;
    const bytes = (name: string) => r.headers.filter(([k]) => k.toLowerCase() === name).map(([, v]) => v.toString('hex'));
    expect(bytes('impersonate-user')).toEqual([Buffer.from('开发者').toString('hex')]);
    expect(bytes('impersonate-group')).toEqual(['开发', 'développeurs', 'a b'].map((g) => Buffer.from(g).toString('hex')));
    if (peer.cluster === 'member-nginx') {
      // nginx itself (not only the backend behind it) read the same bytes.
      const who = await l7(peer.cluster, '/whoami', { token: 'utf8-token' });
      expect(JSON.parse(who.body.toString('utf8'))).toEqual({ user: '开发者', group: '开发', authorization: `Bearer ${AGENT_TOKEN}` });
    }
  });

  it('groups outside Latin-1 from a client certificate (certs client --group 开发) arrive as UTF-8', async () => {
    const cert = fs.readFileSync(path.join(certDir, 'client-cert-user.crt'), 'utf8');
    const key = fs.readFileSync(path.join(certDir, 'client-cert-user.key'), 'utf8');
    const seen = await recordedDuring(peer.cluster, async () => expect((await l7(peer.cluster, '/large?size=10', { cert, key })).status).toBe(200));
    expect(headerValues(seen[0]!, 'impersonate-user')).toEqual(['cert-user']);
    expect(headerValues(seen[0]!, 'impersonate-group')).toEqual(['开发', 'é']);
  });

  it('2,000 groups arrive, one Impersonate-Group line each, in order', async () => {
    const seen = await recordedDuring(peer.cluster, async () => expect((await l7(peer.cluster, '/large?size=10', { token: 'many-token' })).status).toBe(200));
    expect(headerValues(seen[0]!, 'impersonate-group')).toEqual(MANY_GROUPS);
  });

  it('groups too large for an OPEN frame: 431 at the hub with the reason, nothing sent to the member', async () => {
    const seen = await recordedDuring(peer.cluster, async () => {
      const a = await l7(peer.cluster, '/version', { token: 'huge-token' });
      expect(a.status).toBe(431);
      expect(JSON.parse(a.body.toString()).message).toMatch(/^identity too large for the tunnel: 2000 groups, \d+ bytes \(at most 65536\)$/);
    });
    expect(seen).toEqual([]);
  });

  it('zero-length writes on an L7 request and response: empty client chunks, empty upstream writes', async () => {
    // More than a stream's window each way, so that the sender still holds bytes
    // when its HTTP message ends: Node's end() then writes an empty chunk.
    const chunks = [Buffer.alloc(0), Buffer.from('a'.repeat(1000)), Buffer.alloc(0), randomBytes(600_000), Buffer.alloc(0)];
    for (let i = 0; i < 3; i++) {
      const a = await l7(peer.cluster, '/echo', { method: 'POST', chunks, headers: { 'content-type': 'application/octet-stream' } });
      expect(a.status).toBe(200);
      expect(a.body.equals(Buffer.concat(chunks))).toBe(true);
    }
    // kube_like.py writes an empty chunk after every 64 KiB of /large and between a watch's events.
    expect((await l7(peer.cluster, '/large?size=200000')).body.equals(largePattern(200_000))).toBe(true);
    expect((await l7(peer.cluster, '/api/v1/namespaces?watch=1')).body.toString()).toContain('"kube-system"');
  });

  it('curl POSTs 2 MiB (Expect: 100-continue) over L7 and gets it back byte-exact', async () => {
    const file = path.join(dir, `post-${peer.cluster}.bin`);
    const data = randomBytes(2 * 1024 * 1024);
    fs.writeFileSync(file, data);
    const out = path.join(dir, `post-${peer.cluster}.out`);
    await run('curl', ['-sS', '--fail', '--cacert', path.join(certDir, 'ca.crt'), '-H', 'Authorization: Bearer admin-token',
      '-H', 'Content-Type: application/octet-stream', '--data-binary', `@${file}`, '-o', out,
      `https://localhost:${server.proxy}/clusters/${peer.cluster}/echo`]);
    expect(fs.readFileSync(out).equals(data)).toBe(true);
  });

  it('HEAD, 204 and a body ended by closing the connection, over L7', async () => {
    const head = await l7(peer.cluster, '/version', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.body.length).toBe(0);
    expect((await l7(peer.cluster, '/no-content')).status).toBe(204);
    const closed = await l7(peer.cluster, '/close-delimited');
    expect(closed.status).toBe(200);
    expect(closed.body.equals(largePattern(300_000))).toBe(true);
    // The same connection-less answers again, then a normal request: nothing left behind.
    expect((await l7(peer.cluster, '/version')).status).toBe(200);
  });

  it('zero-length writes on an L7 upgrade, both directions', async () => {
    const socket = tls.connect({ host: '127.0.0.1', port: server.proxy, ca: hubCA, servername: 'localhost' });
    await once(socket, 'secureConnect');
    socket.write(
      `GET /clusters/${peer.cluster}/upgrade-echo HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer admin-token\r\n` +
        'Connection: Upgrade\r\nUpgrade: x-echo\r\n\r\n',
    );
    const [head] = (await once(socket, 'data')) as [Buffer];
    expect(head.toString('latin1')).toMatch(/^HTTP\/1\.1 101 /);
    const rest = head.subarray(head.indexOf('\r\n\r\n') + 4);
    const sent: Buffer[] = [];
    let received = rest.length;
    const got: Buffer[] = [rest];
    const payload = randomBytes(100_000);
    const done = new Promise<void>((resolve) =>
      socket.on('data', (c: Buffer) => {
        got.push(c);
        received += c.length;
        if (received >= payload.length) resolve();
      }),
    );
    for (let i = 0; i < payload.length; i += 10_000) {
      socket.write(Buffer.alloc(0));
      sent.push(payload.subarray(i, i + 10_000));
      socket.write(payload.subarray(i, i + 10_000));
    }
    await done;
    expect(Buffer.concat(got).equals(payload)).toBe(true);
    socket.end();
    await once(socket, 'close');
  });

  it('zero-length writes on a CONNECT stream: empty client writes, empty upstream writes, byte-exact', async () => {
    const body = await rawConnectGet(peer.cluster, '/large?size=300000', [0, 1, 2]);
    expect(body.equals(largePattern(300_000))).toBe(true);
  });
});

describe('the stand-in reads impersonation headers as UTF-8, as a Go apiserver does', () => {
  it('kubectl auth whoami over L7 shows the user and groups outside Latin-1', async () => {
    const who = JSON.parse(
      await run('kubectl', ['--kubeconfig', await kubeconfig('l7', 'utf8-token'), '--context', 'member-standin-l7', 'auth', 'whoami', '-o', 'json']),
    ) as { status: { userInfo: { username: string; groups: string[] } } };
    expect(who.status.userInfo.username).toBe('开发者');
    expect(who.status.userInfo.groups).toEqual(['开发', 'développeurs', 'a b', 'system:authenticated']);
  });
});

describe('identities that cannot be carried are refused where they are authenticated', () => {
  it('a certificate whose name starts with a space: 403 with the reason, nothing sent to the member', async () => {
    const pem = issueClientCert(loadClientCA(certDir).ca, { user: ' admin', groups: ['dev'] });
    const seen = await recordedDuring('member-python', async () => {
      const a = await l7('member-python', '/version', pem);
      expect(a.status).toBe(403);
      expect(JSON.parse(a.body.toString()).message).toBe('identity cannot be carried to the member cluster: user " admin" starts or ends with a space');
    });
    expect(seen).toEqual([]);
  });

  it('a certificate group with a C1 control character: 403, nothing sent', async () => {
    const pem = issueClientCert(loadClientCA(certDir).ca, { user: 'bob', groups: ['dev\u0085ops'] });
    const seen = await recordedDuring('member-python', async () => {
      const a = await l7('member-python', '/version', pem);
      expect(a.status).toBe(403);
      expect(JSON.parse(a.body.toString()).message).toMatch(/group "dev\\u0085ops" contains a control character/);
    });
    expect(seen).toEqual([]);
  });

  it('a token file entry with a control character: the server refuses the file at start, naming the line', async () => {
    const bad = path.join(dir, 'bad-tokens.csv');
    fs.writeFileSync(bad, 'ok-token,ok,1\nbad-token,bob,2,"dev\u0001ops"\n');
    const proc = new Proc(['server',
      '--cert', path.join(certDir, 'server.crt'), '--key', path.join(certDir, 'server.key'), '--client-ca', path.join(certDir, 'client-ca.crt'),
      '--bind-address', '127.0.0.1', '--proxy-port', '0', '--agent-port', '0', '--health-port', '0', '--admin-port', '0',
      '--token-file', bad]);
    // It must exit; a server that comes up with the file instead fails the test at once.
    const listening = proc.waitFor((l) => l.listener === 'proxy', 'proxy listener').then(
      () => 'listening',
      () => 'exited',
    );
    const outcome = await Promise.race([proc.exited.then(() => 'exited'), listening]);
    await proc.stop();
    expect(outcome).toBe('exited');
    expect(await proc.exited).not.toBe(0);
    const out = proc.stderr.join('') + JSON.stringify(proc.lines);
    expect(out).toMatch(/token file line 2: group contains a control character/);
  });
});

/**
 * GET `reqPath` from `cluster`'s apiserver through a raw CONNECT and TLS
 * inside it; `emptyAt` lists request pieces before which the client writes an
 * empty buffer. Resolves with the body.
 */
async function rawConnectGet(cluster: string, reqPath: string, emptyAt: number[]): Promise<Buffer> {
  const outer = tls.connect({ host: '127.0.0.1', port: server.proxy, ca: hubCA, servername: 'localhost' });
  await once(outer, 'secureConnect');
  outer.write(`CONNECT ${cluster}:443 HTTP/1.1\r\nHost: ${cluster}:443\r\nX-Cluster-Name: ${cluster}\r\nProxy-Authorization: Bearer admin-token\r\n\r\n`);
  const [head] = (await once(outer, 'data')) as [Buffer];
  expect(head.toString()).toMatch(/^HTTP\/1\.1 200 /);
  const inner = tls.connect({ socket: outer, servername: 'kubernetes.default.svc', ca: fs.readFileSync(memberCAFile.get(cluster)!) });
  await once(inner, 'secureConnect');
  const pieces = [`GET ${reqPath} HTTP/1.1\r\n`, 'Host: kubernetes.default.svc\r\n', `Authorization: Bearer ${MEMBER_TOKEN}\r\n`, 'Connection: close\r\n\r\n'];
  pieces.forEach((p, i) => {
    if (emptyAt.includes(i)) inner.write(Buffer.alloc(0));
    inner.write(p);
  });
  const chunks: Buffer[] = [];
  for await (const c of inner) chunks.push(c as Buffer);
  const all = Buffer.concat(chunks);
  const end = all.indexOf('\r\n\r\n');
  expect(all.subarray(0, end).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
  return all.subarray(end + 4);
}
