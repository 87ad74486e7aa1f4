/**
 * H2Upstream: the member side's requests to an apiserver over HTTP/2, on
 * real TLS connections to Node's HTTP/2 server (and to an HTTPS server that
 * speaks HTTP/1.1 only). One connection carries every request until the
 * server's stream limit is reached; a server without HTTP/2 gets every
 * request over the HTTP/1.1 pool; a reset stream fails its request only;
 * after GOAWAY new requests go on a new connection; an idle connection is
 * closed. And which requests the member side sends this way: watches.
 */
import { once } from 'node:events';
import http2 from 'node:http2';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { Pool, type Dispatcher } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { createCA, H2Upstream, isWatch, issueServerCert } from '../src/index.js';

const ca = createCA();
const pem = issueServerCert(ca, { sans: ['127.0.0.1'] });

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** An undici handler that collects one answer (as ResponseRelay takes it). */
function collect(): { handler: Dispatcher.DispatchHandlers; answer: Promise<Answer> } {
  let status = 0;
  const headers: Record<string, string> = {};
  const chunks: Buffer[] = [];
  let resolve!: (a: Answer) => void;
  let reject!: (e: Error) => void;
  const answer = new Promise<Answer>((res, rej) => ((resolve = res), (reject = rej)));
  const handler: Dispatcher.DispatchHandlers = {
    onConnect: () => {},
    onHeaders: (code, raw) => {
      status = code;
      for (let i = 0; i < raw.length; i += 2) headers[raw[i]!.toString('latin1')] = raw[i + 1]!.toString('latin1');
      return true;
    },
    onData: (chunk) => (chunks.push(chunk), true),
    onComplete: () => resolve({ status, headers, body: Buffer.concat(chunks).toString() }),
    onError: reject,
  };
  return { handler, answer };
}

// The Host header as the member side sends it (undici checks the server's certificate against it).
const get = (path: string): Dispatcher.DispatchOptions => ({ method: 'GET', path, headers: { host: '127.0.0.1', accept: 'text/plain' } });

const closers: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

/** Node's HTTP/2 server on 127.0.0.1:0 with `handle`; counts its connections. */
async function h2Server(handle: (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void, settings: http2.Settings = {}) {
  const server = http2.createSecureServer({ ...pem, settings }, handle);
  const sessions = new Set<http2.ServerHttp2Session>();
  let connections = 0;
  server.on('session', (s: http2.ServerHttp2Session) => {
    connections += 1;
    sessions.add(s);
    s.once('close', () => sessions.delete(s));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  closers.push(async () => {
    for (const s of sessions) s.destroy();
    server.close();
    await once(server, 'close');
  });
  return { port: (server.address() as AddressInfo).port, sessions, connections: () => connections };
}

/** An H2Upstream toward 127.0.0.1:port, offering h2 and http/1.1 as the member side does. */
function upstream(port: number, idleMs = 60_000): { up: H2Upstream; pool: Pool } {
  const pool = new Pool(`https://127.0.0.1:${port}`, { connect: { ca: ca.cert } });
  const up = new H2Upstream(
    `127.0.0.1:${port}`,
    (done) => {
      const socket = tls.connect({ host: '127.0.0.1', port, ca: ca.cert, ALPNProtocols: ['h2', 'http/1.1'] });
      socket.once('error', (err) => done(err));
      socket.once('secureConnect', () => done(null, socket));
    },
    pool,
    idleMs,
  );
  closers.push(async () => {
    up.close();
    await pool.close();
  });
  return { up, pool };
}

function send(up: H2Upstream, options: Dispatcher.DispatchOptions): Promise<Answer> {
  const { handler, answer } = collect();
  up.dispatch(options, handler);
  return answer;
}

describe('H2Upstream', () => {
  it('one connection until the server stream limit; then another; every answer whole', async () => {
    const held: http2.Http2ServerResponse[] = [];
    let allHeld!: () => void;
    const heldAll = new Promise<void>((resolve) => (allHeld = resolve));
    const server = await h2Server(
      (req, res) => {
        res.setHeader('x-version', req.httpVersion);
        held.push(res);
        if (held.length === 5) allHeld();
      },
      { maxConcurrentStreams: 2 },
    );
    const { up } = upstream(server.port);
    const answers = Array.from({ length: 5 }, (_, i) => send(up, get(`/held/${i}`)));
    await heldAll;
    // Five open at once with two per connection: three connections, no stream waiting past a limit.
    expect(server.connections()).toBe(3);
    expect(up.connectionCount).toBe(3);
    for (const res of held) res.end('done');
    for (const a of await Promise.all(answers)) expect(a).toMatchObject({ status: 200, body: 'done', headers: { 'x-version': '2.0' } });
    expect(up.protocol).toBe('h2');
  });

  it('a server without HTTP/2: its first connection closes, every request goes over HTTP/1.1', async () => {
    const server = https.createServer({ ...pem, ALPNProtocols: ['http/1.1'] }, (req, res) => res.end(`${req.httpVersion} ${req.url}`));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    closers.push(async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    });
    const { up } = upstream((server.address() as AddressInfo).port);
    const answers = await Promise.all([send(up, get('/a')), send(up, get('/b'))]);
    expect(answers.map((a) => a.body)).toEqual(['1.1 /a', '1.1 /b']);
    expect(up.protocol).toBe('http1');
    expect((await send(up, get('/c'))).body).toBe('1.1 /c');
  });

  it('a stream the server resets fails that request only; the connection serves on', async () => {
    const server = await h2Server((req, res) => {
      if (req.url === '/reset') req.stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      else res.end('ok');
    });
    const { up } = upstream(server.port);
    const [reset, ok] = await Promise.allSettled([send(up, get('/reset')), send(up, get('/ok'))]);
    expect(reset.status).toBe('rejected');
    expect(String((reset as PromiseRejectedResult).reason)).toMatch(/stream ended before its answer \(code 2\)/);
    expect(ok).toMatchObject({ status: 'fulfilled', value: { body: 'ok' } });
    expect((await send(up, get('/ok'))).body).toBe('ok');
    expect(server.connections()).toBe(1);
  });

  it('after GOAWAY the next request goes on a new connection', async () => {
    const server = await h2Server((_req, res) => res.end('ok'));
    const { up } = upstream(server.port);
    expect((await send(up, get('/1'))).body).toBe('ok');
    const [first] = [...server.sessions];
    first!.goaway();
    while (up.connectionCount > 0) await new Promise((resolve) => setImmediate(resolve));
    expect((await send(up, get('/2'))).body).toBe('ok');
    expect(server.connections()).toBe(2);
  });

  it('a connection that carried nothing for the idle time is closed', async () => {
    const server = await h2Server((_req, res) => res.end('ok'));
    const { up } = upstream(server.port, 50);
    expect((await send(up, get('/1'))).body).toBe('ok');
    const [session] = [...server.sessions];
    await once(session!, 'close');
    expect(up.connectionCount).toBe(0);
  });

  it('no apiserver: each waiting request fails with the reason; the next one tries again', async () => {
    const probe = https.createServer();
    probe.listen(0, '127.0.0.1');
    await once(probe, 'listening');
    const port = (probe.address() as AddressInfo).port;
    probe.close();
    await once(probe, 'close');
    const { up } = upstream(port);
    const failed = await Promise.allSettled([send(up, get('/1')), send(up, get('/2'))]);
    for (const f of failed) expect(String((f as PromiseRejectedResult).reason)).toMatch(/ECONNREFUSED/);
    expect(up.protocol).toBe('probe');
  });
});

describe('isWatch', () => {
  it('?watch= as the apiserver reads a boolean, and the older /watch/ paths', () => {
    for (const p of ['/api/v1/namespaces?watch=true', '/api/v1/pods?resourceVersion=1&watch=1', '/apis/apps/v1/deployments?watch=True', '/api/v1/watch/namespaces', '/apis/apps/v1/watch/namespaces/a/deployments?x=1'])
      expect([p, isWatch(p)]).toEqual([p, true]);
    for (const p of ['/api/v1/namespaces', '/api/v1/namespaces?watch=false', '/api/v1/namespaces?watch=0', '/api/v1/namespaces?watch=', '/api/v1/namespaces/watch', '/version?x=watch', '/apis/watch/v1/things'])
      expect([p, isWatch(p)]).toEqual([p, false]);
  });
});
