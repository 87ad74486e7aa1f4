import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { constants as zlibConstants, createDeflate, inflateSync } from 'node:zlib';
import { startStandinApiserver, type StandinApiserver } from '../src/index.js';
import { SPDY_DICTIONARY, SPDY_DICTIONARY_ID } from '../src/spdy-dictionary.js';
import { encodeHeaderBlock, parseHeaderBlock, SpdySession, type SpdyStream } from '../src/spdy.js';

const KUBECTL = '/usr/bin/kubectl';
const TOKEN = 'alice-token';
const BOB_TOKEN = 'bob-token'; // authenticates, but may not impersonate

interface Pki {
  dir: string;
  ca: string;
  cert: string;
  key: string;
  clientCert: string;
  clientKey: string;
}

/** A throwaway CA, a server certificate it signed, and a client certificate (CN=carol, O=devs, O=ops). */
function makePki(): Pki {
  const dir = mkdtempSync(join(tmpdir(), 'standin-test-'));
  const f = (name: string): string => join(dir, name);
  const openssl = (...args: string[]): void => void execFileSync('openssl', args, { stdio: 'pipe' });
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=standin-test-ca',
    '-keyout', f('ca.key'), '-out', f('ca.crt'));
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=standin',
    '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-keyout', f('server.key'), '-out', f('server.csr'));
  openssl('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-days', '1', '-copy_extensions', 'copy', '-out', f('server.crt'));
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/O=devs/O=ops/CN=carol',
    '-keyout', f('client.key'), '-out', f('client.csr'));
  openssl('x509', '-req', '-in', f('client.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-days', '1', '-out', f('client.crt'));
  const read = (name: string): string => readFileSync(f(name), 'utf8');
  return {
    dir,
    ca: read('ca.crt'),
    cert: read('server.crt'),
    key: read('server.key'),
    clientCert: read('client.crt'),
    clientKey: read('client.key'),
  };
}

function writeKubeconfig(pki: Pki, url: string): string {
  const b64 = (s: string): string => Buffer.from(s).toString('base64');
  const path = join(pki.dir, 'kubeconfig');
  writeFileSync(
    path,
    `apiVersion: v1
kind: Config
clusters:
- name: standin
  cluster:
    server: ${url}
    certificate-authority-data: ${b64(pki.ca)}
users:
- name: alice
  user:
    token: ${TOKEN}
- name: carol
  user:
    client-certificate-data: ${b64(pki.clientCert)}
    client-key-data: ${b64(pki.clientKey)}
contexts:
- name: token
  context: {cluster: standin, user: alice, namespace: default}
- name: cert
  context: {cluster: standin, user: carol, namespace: default}
current-context: token
`,
  );
  return path;
}

interface Response {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function request(
  server: StandinApiserver,
  pki: Pki,
  path: string,
  options: { method?: string; headers?: Record<string, string | string[]>; agent?: https.Agent } = {},
): Promise<Response & { reusedSocket: boolean }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      `${server.url}${path}`,
      { method: options.method ?? 'GET', headers: options.headers, ca: pki.ca, agent: options.agent },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body, reusedSocket: req.reusedSocket }),
        );
      },
    );
    req.on('error', reject);
    req.end();
  });
}

const bearer = (token: string): Record<string, string> => ({ Authorization: `Bearer ${token}` });

/** A running child process whose output can be awaited. */
interface Proc {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** Resolves once stdout satisfies `test`; rejects if the process exits first. */
  waitFor: (test: (stdout: string) => boolean) => Promise<string>;
  exited: Promise<number | null>;
}

describe('stand-in apiserver with real kubectl', () => {
  let pki: Pki;
  let server: StandinApiserver;
  let kubeconfig: string;
  const children = new Set<ChildProcess>();

  function kubectl(args: string[], input?: string): Proc {
    const child = spawn(KUBECTL, args, {
      env: { PATH: process.env.PATH ?? '', HOME: pki.dir, KUBECONFIG: kubeconfig },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    children.add(child);
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const exited = new Promise<number | null>((resolve) =>
      child.once('close', (code) => {
        children.delete(child);
        resolve(code);
      }),
    );
    if (input !== undefined) child.stdin.end(input);
    const waitFor = (test: (stdout: string) => boolean): Promise<string> =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          if (!test(out)) return;
          child.stdout.off('data', check);
          resolve(out);
        };
        child.stdout.on('data', check);
        void exited.then((code) =>
          reject(new Error(`kubectl ${args.join(' ')} exited (${code}) first; stdout: ${out} stderr: ${err}`)),
        );
        check();
      });
    return { child, stdout: () => out, stderr: () => err, waitFor, exited };
  }

  /** Runs kubectl to completion. */
  async function run(args: string[], input?: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const proc = kubectl(args, input);
    const code = await proc.exited;
    return { code, stdout: proc.stdout(), stderr: proc.stderr() };
  }

  async function stop(proc: Proc): Promise<void> {
    if (proc.child.exitCode === null && proc.child.signalCode === null) proc.child.kill('SIGTERM');
    await proc.exited;
  }

  beforeAll(async () => {
    pki = makePki();
    server = await startStandinApiserver({
      cluster: 'm1',
      cert: pki.cert,
      key: pki.key,
      ca: pki.ca,
      tokens: { [TOKEN]: { user: 'alice', groups: ['devs'] }, [BOB_TOKEN]: { user: 'bob', groups: [] } },
      impersonators: ['alice'],
    });
    kubeconfig = writeKubeconfig(pki, server.url);
  });

  afterEach(async () => {
    await Promise.all(
      [...children].map(async (child) => {
        child.kill('SIGKILL');
        if (child.exitCode === null && child.signalCode === null) await once(child, 'close');
      }),
    );
  });

  afterAll(async () => {
    await server?.close();
    expect(server.connections).toBe(0);
    if (pki) rmSync(pki.dir, { recursive: true, force: true });
  });

  it('serves /version with the cluster name, over keep-alive', async () => {
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const first = await request(server, pki, '/version', { headers: bearer(TOKEN), agent });
      expect(first.status).toBe(200);
      expect(first.headers['content-type']).toBe('application/json');
      const version = JSON.parse(first.body) as Record<string, string>;
      expect(version).toMatchObject({ major: '1', minor: '32', gitVersion: 'v1.32.0-standin+m1', cluster: 'm1' });
      const second = await request(server, pki, '/healthz', { agent });
      expect(second).toMatchObject({ status: 200, body: 'ok', reusedSocket: true });
    } finally {
      agent.destroy();
    }
  });

  it('answers 401 with a Status without credentials or with an unknown token', async () => {
    const status = {
      kind: 'Status',
      apiVersion: 'v1',
      metadata: {},
      status: 'Failure',
      message: 'Unauthorized',
      reason: 'Unauthorized',
      code: 401,
    };
    const none = await request(server, pki, '/api/v1/namespaces');
    expect(none.status).toBe(401);
    expect(JSON.parse(none.body)).toEqual(status);
    const wrong = await request(server, pki, '/version', { headers: bearer('nope') });
    expect(wrong.status).toBe(401);
    expect(JSON.parse(wrong.body)).toEqual(status);
  });

  it('lists namespaces and records requests without their tokens', async () => {
    const res = await request(server, pki, '/api/v1/namespaces', { headers: bearer(TOKEN) });
    expect(res.status).toBe(200);
    const list = JSON.parse(res.body) as { kind: string; metadata: { resourceVersion: string }; items: Array<{ metadata: { name: string } }> };
    expect(list.kind).toBe('NamespaceList');
    expect(Number(list.metadata.resourceVersion)).toBeGreaterThan(0);
    expect(list.items.map((n) => n.metadata.name)).toEqual(['default', 'kube-system', 'm1-apps']);

    const recorded = server.requests.filter((r) => r.path === '/api/v1/namespaces' && r.user === 'alice').at(-1);
    expect(recorded).toMatchObject({ method: 'GET', effectiveUser: 'alice', upgrade: false });
    expect(recorded?.headers.authorization).toBe('Bearer [redacted]');
    expect(JSON.stringify(server.requests)).not.toContain(TOKEN);
  });

  it('answers unknown paths with a 404 Status and rejects impersonation by non-impersonators', async () => {
    const missing = await request(server, pki, '/apis/apps/v1/deployments', { headers: bearer(TOKEN) });
    expect(missing.status).toBe(404);
    expect(JSON.parse(missing.body)).toMatchObject({ kind: 'Status', reason: 'NotFound', code: 404 });

    const forbidden = await request(server, pki, '/api/v1/namespaces', {
      headers: { ...bearer(BOB_TOKEN), 'Impersonate-User': 'root' },
    });
    expect(forbidden.status).toBe(403);
    expect(JSON.parse(forbidden.body)).toMatchObject({ kind: 'Status', reason: 'Forbidden', code: 403 });
  });

  it('streams namespace watch events to `kubectl get --raw` as they happen', async () => {
    const watch = kubectl(['get', '--raw', '/api/v1/namespaces?watch=1']);
    await watch.waitFor((out) => out.includes('"name":"m1-apps"'));
    expect(watch.stdout()).not.toContain('late-ns');

    server.addNamespace('late-ns');
    const out = await watch.waitFor((o) => o.includes('"name":"late-ns"'));
    const line = out.split('\n').find((l) => l.includes('"name":"late-ns"')) ?? '';
    expect(JSON.parse(line)).toMatchObject({ type: 'ADDED', object: { kind: 'Namespace', metadata: { name: 'late-ns' } } });

    server.deleteNamespace('late-ns');
    await watch.waitFor((o) => o.split('\n').some((l) => l.includes('"DELETED"') && l.includes('late-ns')));
    await stop(watch);
  });

  it('replays events after a resourceVersion and ends a watch after timeoutSeconds', async () => {
    const listed = await request(server, pki, '/api/v1/namespaces', { headers: bearer(TOKEN) });
    const rv = (JSON.parse(listed.body) as { metadata: { resourceVersion: string } }).metadata.resourceVersion;
    server.addNamespace('after-list');
    // The response ends on its own: the server closes the watch after one second.
    const res = await request(server, pki, `/api/v1/namespaces?watch=true&timeoutSeconds=1&resourceVersion=${rv}`, {
      headers: bearer(TOKEN),
    });
    expect(res.status).toBe(200);
    expect(res.headers['transfer-encoding']).toBe('chunked');
    const events = res.body.trim().split('\n').map((l) => JSON.parse(l) as { type: string; object: { metadata: { name: string } } });
    expect(events.map((e) => [e.type, e.object.metadata.name])).toEqual([['ADDED', 'after-list']]);
  });

  it('adds namespaces with extra labels and annotations, which label-selected watches see', async () => {
    const listed = await request(server, pki, '/api/v1/namespaces', { headers: bearer(TOKEN) });
    const rv = (JSON.parse(listed.body) as { metadata: { resourceVersion: string } }).metadata.resourceVersion;
    server.addNamespace('labelled-b', { labels: { team: 'b' } });
    server.addNamespace('labelled-a', { labels: { team: 'a' }, annotations: { 'example.com/note': 'x1' } });
    const res = await request(server, pki, `/api/v1/namespaces?watch=1&timeoutSeconds=1&labelSelector=team%3Da&resourceVersion=${rv}`, {
      headers: bearer(TOKEN),
    });
    expect(res.status).toBe(200);
    const events = res.body.trim().split('\n').map((l) => JSON.parse(l) as { type: string; object: { metadata: Record<string, unknown> } });
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({
      type: 'ADDED',
      object: {
        metadata: {
          name: 'labelled-a',
          labels: { team: 'a', 'kubernetes.io/metadata.name': 'labelled-a' },
          annotations: { 'example.com/note': 'x1' },
        },
      },
    });
  });

  it('shows namespaces added later in `kubectl get ns -w`, also through the test hook', async () => {
    const watch = kubectl(['get', 'namespaces', '--watch']);
    await watch.waitFor((out) => /^m1-apps\s+Active/m.test(out));

    server.addNamespace('watched-one');
    await watch.waitFor((out) => /^watched-one\s+Active/m.test(out));

    const hook = await request(server, pki, '/standin/namespaces/watched-two', { method: 'POST', headers: bearer(TOKEN) });
    expect(hook.status).toBe(201);
    await watch.waitFor((out) => /^watched-two\s+Active/m.test(out));
    await stop(watch);
  });

  it('lists pods with `kubectl get pods`', async () => {
    const res = await run(['get', 'pods']);
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
    expect(res.stdout).toMatch(/^NAME\s+READY\s+STATUS\s+RESTARTS\s+AGE$/m);
    expect(res.stdout).toMatch(/^echo\s+1\/1\s+Running\s+0\s+/m);
  });

  it('tells `kubectl auth whoami` the impersonated identity', async () => {
    const res = await run(['auth', 'whoami', '--as', 'someone', '--as-group', 'g1', '-o', 'json']);
    expect(res.code).toBe(0);
    const review = JSON.parse(res.stdout) as { kind: string; status: { userInfo: { username: string; groups: string[] } } };
    expect(review.kind).toBe('SelfSubjectReview');
    expect(review.status.userInfo).toEqual({ username: 'someone', groups: ['g1', 'system:authenticated'] });

    const recorded = server.requests.filter((r) => r.path.includes('selfsubjectreviews')).at(-1);
    expect(recorded).toMatchObject({ user: 'alice', effectiveUser: 'someone' });
    expect(recorded?.headers['impersonate-user']).toBe('someone');
  });

  it('authenticates a client certificate as CN with O groups', async () => {
    const res = await run(['--context', 'cert', 'auth', 'whoami']);
    expect(res.code).toBe(0);
    expect(res.stdout).toMatch(/Username\s+carol/);
    expect(res.stdout).toMatch(/Groups\s+\[devs ops system:authenticated\]/);
  });

  it('echoes stdin with `kubectl exec -i echo -- cat`', async () => {
    const res = await run(['exec', '-i', 'echo', '--', 'cat'], 'hello\n');
    expect(res.stdout).toBe('hello\n');
    expect(res.code).toBe(0);
    const upgrade = server.requests.filter((r) => r.upgrade && r.path.includes('/exec')).at(-1);
    expect(upgrade?.headers.upgrade?.toLowerCase()).toBe('websocket');
  });

  it('refuses exec without a WebSocket upgrade', async () => {
    const res = await request(server, pki, '/api/v1/namespaces/default/pods/echo/exec?command=cat', {
      method: 'POST',
      headers: bearer(TOKEN),
    });
    expect(res.status).toBe(400);
    expect(JSON.parse(res.body)).toMatchObject({ kind: 'Status', code: 400 });
  });

  it('forwards a local port to the echo pod with `kubectl port-forward` (SPDY over WebSocket)', async () => {
    const pf = kubectl(['port-forward', 'pod/echo', ':8080']);
    const out = await pf.waitFor((o) => /Forwarding from 127\.0\.0\.1:\d+ -> 8080/.test(o));
    const port = Number(/Forwarding from 127\.0\.0\.1:(\d+) -> 8080/.exec(out)?.[1]);

    for (const message of ['first connection\n', 'second connection\n']) {
      const socket = net.connect(port, '127.0.0.1');
      await once(socket, 'connect');
      socket.write(message);
      let echoed = '';
      socket.setEncoding('utf8');
      while (echoed.length < message.length) {
        const [chunk] = (await once(socket, 'data')) as [string];
        echoed += chunk;
      }
      expect(echoed).toBe(message);
      socket.end();
      await once(socket, 'close');
    }
    await stop(pf);
  });

  it('speaks the v4 channel port-forward protocol to WebSocket clients', async () => {
    const ws = new WebSocket(`${server.url.replace('https', 'wss')}/api/v1/namespaces/default/pods/echo/portforward?ports=8080`, ['v4.channel.k8s.io'], {
      ca: pki.ca,
      headers: bearer(TOKEN),
    });
    const messages: Buffer[] = [];
    const gotMessages = (n: number): Promise<void> =>
      new Promise((resolve) => {
        const check = (): void => {
          if (messages.length < n) return;
          ws.off('message', check);
          resolve();
        };
        ws.on('message', check);
      });
    ws.on('message', (data: Buffer) => messages.push(data));
    const prefixes = gotMessages(2);
    await once(ws, 'open');
    expect(ws.protocol).toBe('v4.channel.k8s.io');
    await prefixes;
    expect(messages.map((m) => [...m])).toEqual([
      [0, 0x90, 0x1f],
      [1, 0x90, 0x1f],
    ]);
    const echoed = gotMessages(3);
    ws.send(Buffer.concat([Buffer.of(0), Buffer.from('ping')]));
    await echoed;
    expect(messages[2]?.subarray(1).toString()).toBe('ping');
    ws.close();
    await once(ws, 'close');
  });
});

describe('stand-in apiserver lifecycle', () => {
  it('close() ends watches and WebSockets and leaves no open connections', async () => {
    const pki = makePki();
    try {
      const server = await startStandinApiserver({
        cluster: 'm2',
        cert: pki.cert,
        key: pki.key,
        tokens: { [TOKEN]: { user: 'alice', groups: [] } },
      });
      let watchResponse!: (res: IncomingMessage) => void;
      const watching = new Promise<IncomingMessage>((resolve) => (watchResponse = resolve));
      const watchReq = https.get(`${server.url}/api/v1/namespaces?watch=true`, { ca: pki.ca, headers: bearer(TOKEN) }, watchResponse);
      watchReq.on('error', () => {});
      const res = await watching;
      expect(res.statusCode).toBe(200);
      res.on('error', () => {}); // "aborted": the server goes away mid-stream, which is the point
      const watchClosed = new Promise((resolve) => res.on('close', resolve));
      res.resume();

      const ws = new WebSocket(
        `${server.url.replace('https', 'wss')}/api/v1/namespaces/default/pods/echo/exec?command=cat&stdin=true&stdout=true`,
        ['v5.channel.k8s.io'],
        { ca: pki.ca, headers: bearer(TOKEN) },
      );
      ws.on('error', () => {});
      await once(ws, 'open');
      expect(ws.protocol).toBe('v5.channel.k8s.io');
      expect(server.connections).toBe(2);
      const wsClosed = once(ws, 'close');

      await server.close();
      expect(server.connections).toBe(0);
      await watchClosed;
      await wsClosed;
    } finally {
      rmSync(pki.dir, { recursive: true, force: true });
    }
  });
});

describe('SPDY/3.1 session (the port-forward tunnel framing)', () => {
  it('uses the 1423-byte SPDY/3 dictionary', () => {
    expect(SPDY_DICTIONARY.length).toBe(1423);
    expect(SPDY_DICTIONARY_ID).toBe(0xe3c6a7c2);
  });

  it('accepts streams whose headers share one zlib context, and answers in valid zlib', async () => {
    // The peer compresses like Go's framer: one deflate context, a sync flush per header block.
    const deflate = createDeflate({ dictionary: SPDY_DICTIONARY });
    const compress = (headers: Record<string, string>): Promise<Buffer> =>
      new Promise((resolve) => {
        const chunks: Buffer[] = [];
        const collect = (c: Buffer): number => chunks.push(c);
        deflate.on('data', collect);
        deflate.write(encodeHeaderBlock(new Map(Object.entries(headers).map(([k, v]) => [k, [v]]))));
        deflate.flush(zlibConstants.Z_SYNC_FLUSH, () => {
          deflate.off('data', collect);
          resolve(Buffer.concat(chunks));
        });
      });
    const control = (type: number, flags: number, payload: Buffer): Buffer => {
      const head = Buffer.alloc(8);
      head.writeUInt16BE(0x8003, 0);
      head.writeUInt16BE(type, 2);
      head.writeUInt32BE((flags << 24) | payload.length, 4);
      return Buffer.concat([head, payload]);
    };
    const synStream = async (id: number, headers: Record<string, string>): Promise<Buffer> => {
      const fixed = Buffer.alloc(10);
      fixed.writeUInt32BE(id, 0);
      return control(1, 0, Buffer.concat([fixed, await compress(headers)]));
    };

    const sent: Buffer[] = [];
    const session = new SpdySession((frame) => sent.push(frame));
    const streams: SpdyStream[] = [];
    session.on('stream', (s: SpdyStream) => streams.push(s));

    const first = await synStream(1, { streamtype: 'error', port: '8080', requestid: '0' });
    session.receive(first.subarray(0, 5)); // frames may arrive in pieces
    session.receive(first.subarray(5));
    session.receive(await synStream(3, { streamtype: 'data', port: '8080', requestid: '0' }));
    deflate.close();
    expect(streams.map((s) => [s.id, s.header('streamType'), s.header('port'), s.header('requestID')])).toEqual([
      [1, 'error', '8080', '0'],
      [3, 'data', '8080', '0'],
    ]);

    // Two SYN_REPLYs whose header blocks continue one zlib stream with the SPDY dictionary.
    expect(sent.map((f) => [f.readUInt16BE(2), f.readUInt32BE(8)])).toEqual([
      [2, 1],
      [2, 3],
    ]);
    const replyBlocks = Buffer.concat(sent.map((f) => f.subarray(12)));
    const inflated = inflateSync(replyBlocks, { dictionary: SPDY_DICTIONARY, finishFlush: zlibConstants.Z_SYNC_FLUSH });
    expect([...inflated]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]); // two empty header blocks
    expect(parseHeaderBlock(inflated.subarray(0, 4)).size).toBe(0);

    // DATA in, FIN, PING.
    const data = streams[1]!;
    const received: string[] = [];
    data.on('data', (d: Buffer) => received.push(d.toString()));
    const ended = once(data, 'end');
    const frame = Buffer.alloc(8);
    frame.writeUInt32BE(3, 0);
    frame.writeUInt32BE((1 << 24) | 2, 4);
    session.receive(Buffer.concat([frame, Buffer.from('hi')]));
    await ended;
    expect(received).toEqual(['hi']);

    sent.length = 0;
    const pingId = Buffer.alloc(4);
    pingId.writeUInt32BE(1);
    session.receive(control(6, 0, pingId));
    expect(sent).toEqual([control(6, 0, pingId)]);
    session.close();
  });
});
