/**
 * HTTP/2 on the L7 frontend: the proxy port offers `h2` and `http/1.1`;
 * an HTTP/2 client carries all its requests and watches to the hub on one
 * connection, each request on a tunnel stream of its caller (kept for later
 * requests of that connection, as for HTTP/1.1), and the agent carries
 * them on to the stand-in over one HTTP/2 connection. Server, agent and stand-in
 * apiserver run in this process; the clients are curl and Node's HTTP/2
 * client.
 */
import { execFile } from 'node:child_process';
import diagnostics from 'node:diagnostics_channel';
import { once } from 'node:events';
import fs from 'node:fs';
import http2 from 'node:http2';
import type { Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { KubetunnelServer } from '@kubetunnel/server';
import { defaultLimits, type MuxStream } from '@kubetunnel/shared';
import type { StandinApiserver } from '@kubetunnel/standin-apiserver';
import { expectIdle, noDelayOf, startL7Member, type L7Member } from './fixtures.js';

const IDLE_MS = 300;
const TOKEN = 'alice-token';

let member: L7Member;
let server: KubetunnelServer;
let api: StandinApiserver;
let caFile: string;

beforeAll(async () => {
  member = await startL7Member(new Map([[TOKEN, { user: 'alice', uid: '1', groups: ['dev'] }]]), {}, {
    limits: { proxy: { ...defaultLimits('frontend'), idleTimeoutMs: IDLE_MS } },
  });
  ({ server, api } = member);
  caFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'l7h2-')), 'ca.crt');
  fs.writeFileSync(caFile, member.hubCA.cert);
});

const sessions = new Set<http2.ClientHttp2Session>();

afterEach(async () => {
  for (const s of sessions) s.destroy();
  await Promise.all([...sessions].map((s) => (s.closed ? undefined : once(s, 'close'))));
  sessions.clear();
  await expectIdle(server, member.agent);
  // Every client connection is gone at the hub too (its side closes a moment after the client's).
  const deadline = Date.now() + 3000;
  while (server.frontendSockets() > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
  expect(server.frontendSockets()).toBe(0);
});

afterAll(async () => {
  await member.close();
  fs.rmSync(path.dirname(caFile), { recursive: true, force: true });
});

const hub = () => `https://127.0.0.1:${server.addresses.proxy.port}`;

async function connect(): Promise<http2.ClientHttp2Session> {
  const session = http2.connect(hub(), { ca: member.hubCA.cert, servername: 'localhost' });
  sessions.add(session);
  session.on('error', () => {});
  await once(session, 'connect');
  return session;
}

interface Answer {
  status: number;
  headers: http2.IncomingHttpHeaders;
  body: string;
}

/** One request on `session`; resolves with the whole answer. */
async function request(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: string): Promise<Answer> {
  const stream = session.request({ authorization: `Bearer ${TOKEN}`, ...headers }, { endStream: body === undefined });
  if (body !== undefined) stream.end(body);
  const [head] = (await once(stream, 'response')) as [http2.IncomingHttpHeaders];
  let text = '';
  stream.setEncoding('utf8').on('data', (d: string) => (text += d));
  await once(stream, 'end');
  return { status: Number(head[':status']), headers: head, body: text };
}

/** Counts the OPENs the hub sends on the tunnel of member-1 while `body` runs. */
async function countingOpens(body: () => Promise<void>): Promise<number> {
  const session = [...server.registry.get('member-1')!.agents.values()][0]!.session;
  const open = session.open;
  let opens = 0;
  session.open = (...args: Parameters<typeof open>): Promise<MuxStream> => {
    opens += 1;
    return open.apply(session, args);
  };
  try {
    await body();
  } finally {
    session.open = open;
  }
  return opens;
}

const run = promisify(execFile);

describe('one port, both protocols', () => {
  it('curl gets the same answer over HTTP/2 and over HTTP/1.1', async () => {
    for (const [flag, version] of [
      ['--http2', '2'],
      ['--http1.1', '1.1'],
    ] as const) {
      const { stdout } = await run('curl', [
        '-sS', flag, '--cacert', caFile, '--resolve', `localhost:${server.addresses.proxy.port}:127.0.0.1`,
        '-H', `Authorization: Bearer ${TOKEN}`, '-w', '\n%{http_version} %{http_code}',
        `https://localhost:${server.addresses.proxy.port}/clusters/member-1/version`,
      ]);
      const [body, last] = stdout.split('\n');
      expect(last).toBe(`${version} 200`);
      expect(JSON.parse(body!).cluster).toBe('member-1');
      expect(api.requests[api.requests.length - 1]!.effectiveUser).toBe('alice');
    }
  });

  it('client connections of both protocols run without Nagle delay (a CONNECT answer waited 40 ms for a delayed ACK)', async () => {
    // Node's HTTP/1.1 server turns Nagle off by default; its HTTP/2 server does not.
    const accepted: Socket[] = [];
    const onSocket = ({ socket }: { socket: Socket }) => void (socket.localPort === server.addresses.proxy.port && accepted.push(socket));
    diagnostics.subscribe('net.server.socket', onSocket as (message: unknown) => void);
    try {
      await connect();
      const h1 = tls.connect({ host: '127.0.0.1', port: server.addresses.proxy.port, ca: member.hubCA.cert, servername: 'localhost', ALPNProtocols: ['http/1.1'] });
      await once(h1, 'secureConnect');
      h1.destroy();
      await once(h1, 'close');
      expect(accepted.map(noDelayOf)).toEqual([true, true]);
    } finally {
      diagnostics.unsubscribe('net.server.socket', onSocket as (message: unknown) => void);
    }
  });

  it('CONNECT over HTTP/2 is refused with a reason (CONNECT is HTTP/1.1 on this port)', async () => {
    const session = await connect();
    const stream = session.request({ ':method': 'CONNECT', ':authority': 'kubernetes.default.svc:443', authorization: `Bearer ${TOKEN}` });
    const [head] = (await once(stream, 'response')) as [http2.IncomingHttpHeaders];
    let text = '';
    stream.setEncoding('utf8').on('data', (d: string) => (text += d));
    await once(stream, 'end');
    expect(head[':status']).toBe(405);
    expect(JSON.parse(text)).toMatchObject({ kind: 'Status', code: 405, message: 'CONNECT is served over HTTP/1.1 on this port' });
  });
});

describe('HTTP/2 requests', () => {
  it('sequential requests of one connection share one tunnel stream; the answer carries no HTTP/1.1 framing', async () => {
    const session = await connect();
    const opens = await countingOpens(async () => {
      for (let i = 0; i < 5; i++) {
        const r = await request(session, { ':path': '/clusters/member-1/api/v1/namespaces' });
        expect(r.status).toBe(200);
        expect(JSON.parse(r.body).kind).toBe('NamespaceList');
        for (const name of ['connection', 'keep-alive', 'transfer-encoding']) expect(r.headers[name]).toBeUndefined();
      }
    });
    expect(opens).toBe(1);
    // The agent sent it on over a kept HTTP/1.1 connection of its own (watches alone go over HTTP/2).
    const seen = api.requests[api.requests.length - 1]!;
    expect([seen.httpVersion, seen.path]).toEqual(['1.1', '/api/v1/namespaces']);
  });

  it('a body without Content-Length reaches the member whole (POST a namespace)', async () => {
    const session = await connect();
    const name = `h2-body-${process.pid}`;
    const r = await request(
      session,
      { ':method': 'POST', ':path': '/clusters/member-1/api/v1/namespaces', 'content-type': 'application/json' },
      JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name } }),
    );
    expect(r.status).toBe(201);
    expect(JSON.parse(r.body).metadata.name).toBe(name);
    api.deleteNamespace(name);
  });

  it('twenty watches on one connection: one connection at the hub, every watch gets the event, streams end with them', async () => {
    const session = await connect();
    const rv = JSON.parse((await request(session, { ':path': '/clusters/member-1/api/v1/namespaces' })).body).metadata.resourceVersion as string;
    const name = `h2-watch-${process.pid}`;
    const watches: http2.ClientHttp2Stream[] = [];
    const memberConnections = api.connections;
    const recorded = api.requests.length;
    const opens = await countingOpens(async () => {
      for (let i = 0; i < 20; i++)
        watches.push(session.request({ ':path': `/clusters/member-1/api/v1/namespaces?watch=1&resourceVersion=${rv}`, authorization: `Bearer ${TOKEN}` }));
      // Every watch is established (its head came at once) before any event.
      const heads = (await Promise.all(watches.map((w) => once(w, 'response')))) as Array<[http2.IncomingHttpHeaders]>;
      for (const [head] of heads) expect(head[':status']).toBe(200);
    });
    // The list's stream was kept and taken by one watch; each other watch has its own.
    expect(opens).toBe(19);
    expect(server.frontendSockets()).toBe(1);
    // And one at the member: the agent carries them all over one HTTP/2 connection of its own (at most one new).
    expect(api.connections - memberConnections).toBeLessThanOrEqual(1);
    expect(new Set(api.requests.slice(recorded).map((r) => r.httpVersion))).toEqual(new Set(['2.0']));
    const events = watches.map(
      (w) =>
        new Promise<unknown>((resolve) => {
          let buf = '';
          w.setEncoding('utf8').on('data', (d: string) => {
            buf += d;
            const nl = buf.indexOf('\n');
            if (nl >= 0) resolve(JSON.parse(buf.slice(0, nl)));
          });
        }),
    );
    api.addNamespace(name);
    for (const event of await Promise.all(events)) expect(event).toMatchObject({ type: 'ADDED', object: { metadata: { name } } });
    for (const w of watches) w.close(http2.constants.NGHTTP2_CANCEL);
    await Promise.all(watches.map((w) => (w.closed ? undefined : once(w, 'close'))));
    // A watch cancelled by its caller ends its stream in the tunnel too.
    await expectIdle(server, member.agent);
    api.deleteNamespace(name);
  });

  it('a header list over the limit refuses that stream only; the connection serves on', async () => {
    const session = await connect();
    // The first answer makes sure the server's SETTINGS (with its header list limit) are in force.
    expect((await request(session, { ':path': '/clusters/member-1/version' })).status).toBe(200);
    const big = session.request({ ':path': '/clusters/member-1/version', authorization: `Bearer ${TOKEN}`, 'x-big': 'a'.repeat(20 * 1024) });
    const [err] = (await once(big, 'error').catch((e: unknown) => [e])) as [NodeJS.ErrnoException];
    expect(err.code).toBe('ERR_HTTP2_STREAM_ERROR');
    expect(big.rstCode).toBe(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
    expect((await request(session, { ':path': '/clusters/member-1/version' })).status).toBe(200);
  });
});

describe('HTTP/2 idle timeout', () => {
  it('a connection with no stream open is closed (GOAWAY) after the idle timeout; a quiet watch keeps it open', async () => {
    const session = await connect();
    let goaway = false;
    session.on('goaway', () => (goaway = true));
    const watch = session.request({ ':path': '/clusters/member-1/api/v1/namespaces?watch=1', authorization: `Bearer ${TOKEN}` });
    await once(watch, 'response');
    // Quiet for three idle timeouts: a watch is a stream, so the connection stays.
    await new Promise((resolve) => setTimeout(resolve, 3 * IDLE_MS));
    expect(goaway).toBe(false);
    expect(session.closed || session.destroyed).toBe(false);
    watch.close(http2.constants.NGHTTP2_CANCEL);
    // The last stream ended: the hub says goodbye once the idle timeout has passed.
    await once(session, 'goaway');
    await once(session, 'close');
  });
});

// Last: the server goes away.
describe('drain', () => {
  it('an HTTP/2 client is told GOAWAY at once, so that its next requests go to another replica', async () => {
    const session = await connect();
    // An open watch: the connection is not idle, so only the drain says GOAWAY.
    const watch = session.request({ ':path': '/clusters/member-1/api/v1/namespaces?watch=1', authorization: `Bearer ${TOKEN}` });
    watch.on('error', () => {});
    await once(watch, 'response');
    const goaway = once(session, 'goaway');
    const drained = server.drain(1000);
    await goaway;
    expect(watch.closed).toBe(false);
    await drained;
  });
});
