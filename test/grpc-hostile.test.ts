/**
 * Hostile peers on the gRPC listeners (ProxyService over TLS, AgentService):
 * each is held to the shared TLS policy and the listener guard as the other
 * listeners are, and to gRPC's own bounds; a working client on the same
 * listener is served throughout. Server and agent in this process, with
 * short timeouts and a small pending cap so that the bounds show quickly.
 */
import { once } from 'node:events';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Agent } from '@kubetunnel/agent';
import { ProxyServiceClient, packets, startServer, type KubetunnelServer, type Packet } from '@kubetunnel/server';
import { createCA, defaultLimits, issueAgentCert, issueClientCert, issueServerCert, silentLogger, type ListenerLimits } from '@kubetunnel/shared';
import { expectIdle, startRegisteredAgent, testAgentConfig, testServerConfig } from './fixtures.js';
import { expectNoLeaks, liveResources } from '../packages/shared/test/helpers.js';

const ca = createCA();
const serverPem = issueServerCert(ca, { sans: ['localhost', '127.0.0.1'] });
const alice = issueClientCert(ca, { user: 'alice', groups: [] });
const agentPem = issueAgentCert(ca, { cluster: 'member-1' });
const tokens = new Map([['t', { user: 'alice', uid: '1', groups: [] }]]);

/** Short enough that a test sees them act; the bound a close must come within is generous. */
const TIMEOUT_MS = 400;
const BOUND_MS = 5000;
const MAX_PENDING = 8;
const small = (kind: 'frontend' | 'agent-gateway'): ListenerLimits => ({
  ...defaultLimits(kind),
  handshakeTimeoutMs: TIMEOUT_MS,
  headerTimeoutMs: TIMEOUT_MS,
  maxPending: MAX_PENDING,
});

let server: KubetunnelServer;
let agent: Agent;
let echo: net.Server;
let before: Record<string, number>;
let clients: grpc.Client[] = [];
let sockets: net.Socket[] = [];

const port = (which: 'grpc' | 'anpAgent') => server.addresses[which]!.port;

beforeEach(async () => {
  before = liveResources();
  echo = net.createServer((s) => {
    s.on('error', () => {});
    s.pipe(s);
  });
  echo.listen(0, '127.0.0.1');
  await once(echo, 'listening');
  server = await startServer(
    {
      ...testServerConfig(ca, serverPem, tokens),
      grpcPort: 0,
      anpAgentPort: 0,
      limits: { grpc: small('frontend'), 'anp-agent': small('agent-gateway') },
    },
    silentLogger(),
  );
  agent = await startRegisteredAgent(
    server,
    testAgentConfig(server, ca, agentPem, 'member-1', `https://127.0.0.1:${(echo.address() as net.AddressInfo).port}`),
  );
});

afterEach(async () => {
  for (const s of sockets) s.destroy();
  sockets = [];
  for (const c of clients) c.close();
  clients = [];
  await expectIdle(server);
  await agent.close();
  await server.close();
  echo.close();
  await once(echo, 'close');
  await expectNoLeaks(before);
});

const client = (): grpc.Client => {
  const c = new ProxyServiceClient(
    `127.0.0.1:${port('grpc')}`,
    grpc.credentials.createSsl(Buffer.from(ca.cert), Buffer.from(alice.key), Buffer.from(alice.cert)),
    { 'grpc.ssl_target_name_override': 'localhost' },
  );
  clients.push(c);
  return c;
};

/** One Proxy call: its packets and final status. */
function proxyCall(c: grpc.Client) {
  const call = (c as unknown as { Proxy(md: grpc.Metadata): grpc.ClientDuplexStream<Packet, Packet> }).Proxy(new grpc.Metadata());
  const received: Packet[] = [];
  call.on('data', (p: Packet) => received.push(p));
  call.on('error', () => {});
  const status = new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve));
  return { call, received, status };
}

/** A working client: dial member-1's echo, send `text`, read it back, close. */
async function echoRoundTrip(c: grpc.Client, text = 'still served'): Promise<string> {
  const { call, status } = proxyCall(c);
  const packetsIn: Packet[] = [];
  let wake: () => void = () => {};
  call.on('data', (p: Packet) => {
    packetsIn.push(p);
    wake();
  });
  const next = async (type: Packet['type']): Promise<Packet> => {
    for (;;) {
      const p = packetsIn.find((x) => x.type === type);
      if (p) return p;
      await new Promise<void>((r) => (wake = r));
    }
  };
  call.write(packets.dialReq('member-1:443', '7'));
  const id = (await next('DIAL_RSP')).dialResponse!.connectID;
  call.write(packets.data(id, Buffer.from(text)));
  const back = (await next('DATA')).data!.data.toString();
  call.write(packets.closeReq(id));
  expect((await status).code).toBe(grpc.status.OK);
  return back;
}

/** Resolves with how long the socket lived once it closes, or with undefined if it is still open after `ms`. */
function closedWithin(socket: net.Socket, ms: number): Promise<number | undefined> {
  const started = performance.now();
  if (socket.destroyed) return Promise.resolve(0);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(undefined), ms);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(performance.now() - started);
    });
  });
}

function rawTcp(p: number): net.Socket {
  const s = net.connect({ host: '127.0.0.1', port: p });
  s.on('error', () => {});
  s.resume();
  sockets.push(s);
  return s;
}

async function refused(listener: string, reason: string): Promise<number> {
  const v = (await server.metrics.connectionsRefused.get()).values.find((x) => x.labels.listener === listener && x.labels.reason === reason);
  return v?.value ?? 0;
}

describe('hostile peers on the gRPC listeners', () => {
  it('TLS policy: a client offering only suites without forward secrecy is refused the handshake; ECDHE with AEAD is accepted; the same after a reload', async () => {
    for (const p of [port('grpc'), port('anpAgent'), 'reload' as const, port('grpc'), port('anpAgent')]) {
      if (p === 'reload') {
        server.updateTls({ cert: serverPem.cert, key: serverPem.key, ca: ca.cert });
        continue;
      }
      const weak = tls.connect({
        host: '127.0.0.1',
        port: p,
        ca: ca.cert,
        servername: 'localhost',
        maxVersion: 'TLSv1.2',
        ciphers: 'AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA256',
        ALPNProtocols: ['h2'],
        ...agentPem,
      });
      const outcome = await new Promise<string>((resolve) => {
        weak.once('secureConnect', () => resolve(`connected with ${weak.getCipher().name}`));
        weak.once('error', (err: Error & { code?: string }) => resolve(String(err.code)));
      });
      expect(outcome).toMatch(/SSL|ECONNRESET/);
      weak.destroy();
      const strong = tls.connect({
        host: '127.0.0.1',
        port: p,
        ca: ca.cert,
        servername: 'localhost',
        maxVersion: 'TLSv1.2',
        ciphers: 'ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256',
        ALPNProtocols: ['h2'],
        ...agentPem,
      });
      await once(strong, 'secureConnect');
      expect(strong.getCipher().name).toMatch(/^ECDHE-(RSA|ECDSA)-AES128-GCM-SHA256$/);
      strong.destroy();
    }
  });

  it('slow loris on the TLS handshake and a flood of idle connections: the oldest pending closed past the cap, every one at the handshake timeout; a real client is served', async () => {
    for (const [listener, p] of [['grpc', port('grpc')], ['anp-agent', port('anpAgent')]] as const) {
      const evictedBefore = await refused(listener, 'max-pending');
      const timedOutBefore = await refused(listener, 'handshake-timeout');
      // Half a ClientHello trickled in, and connections that send nothing at all.
      const hello = await clientHello();
      const loris = Array.from({ length: 3 * MAX_PENDING }, (_, i) => {
        const s = rawTcp(p);
        if (i % 2 === 0) s.once('connect', () => s.write(hello.subarray(0, 20)));
        return s;
      });
      await Promise.all(loris.map((s) => once(s, 'connect').catch(() => undefined)));
      expect(server.metrics.listeners.get(listener)!.pending).toBeLessThanOrEqual(MAX_PENDING);
      if (listener === 'grpc') expect(await echoRoundTrip(client())).toBe('still served');
      const lived = await Promise.all(loris.map((s) => closedWithin(s, BOUND_MS)));
      expect(lived.every((ms) => ms !== undefined)).toBe(true);
      expect((await refused(listener, 'max-pending')) - evictedBefore).toBeGreaterThanOrEqual(2 * MAX_PENDING - 1);
      expect((await refused(listener, 'handshake-timeout')) - timedOutBefore).toBeGreaterThanOrEqual(1);
    }
  });

  it('a finished handshake and then nothing, or an HTTP/2 connection that opens no call: closed at the header timeout', async () => {
    const before = await refused('grpc', 'header-timeout');
    // A real client's connection, settled by its first call, lives on past the header timeout.
    const c = client();
    expect(await echoRoundTrip(c)).toBe('still served');
    const silent = tls.connect({ host: '127.0.0.1', port: port('grpc'), ca: ca.cert, servername: 'localhost', ALPNProtocols: ['h2'] });
    silent.on('error', () => {});
    silent.resume();
    sockets.push(silent);
    await once(silent, 'secureConnect');
    const session = http2.connect(`https://localhost:${port('grpc')}`, { ca: ca.cert, host: '127.0.0.1', servername: 'localhost' } as http2.SecureClientSessionOptions);
    session.on('error', () => {});
    await once(session, 'connect');
    const sessionClosed = once(session, 'close');
    expect(await closedWithin(silent, BOUND_MS)).toBeDefined();
    await Promise.race([sessionClosed, new Promise((_, reject) => setTimeout(() => reject(new Error('session still open')), BOUND_MS).unref())]);
    expect((await refused('grpc', 'header-timeout')) - before).toBe(2);
    expect(await echoRoundTrip(c)).toBe('still served');
    expect((await refused('grpc', 'header-timeout')) - before).toBe(2);
    expect(server.metrics.listeners.get('grpc')).toMatchObject({ open: 1, pending: 0 });
  });

  it('garbage bytes after the handshake: the connection is closed, the listener serves on', async () => {
    const junk = tls.connect({ host: '127.0.0.1', port: port('grpc'), ca: ca.cert, servername: 'localhost', ALPNProtocols: ['h2'] });
    junk.on('error', () => {});
    junk.resume();
    sockets.push(junk);
    await once(junk, 'secureConnect');
    junk.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02garbage'.repeat(20)));
    expect(await closedWithin(junk, BOUND_MS)).toBeDefined();
    expect(await echoRoundTrip(client())).toBe('still served');
  });

  it('a message over the receive bound ends that call RESOURCE_EXHAUSTED; the connection and its other calls go on', async () => {
    const c = client();
    const { call, received, status } = proxyCall(c);
    call.write(packets.dialReq('member-1:443', '9'));
    while (received.length === 0) await new Promise((r) => setTimeout(r, 5));
    const id = received[0]!.dialResponse!.connectID;
    call.write(packets.data(id, Buffer.alloc(2 * 1024 * 1024, 1)));
    const s = await status;
    expect(s.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(s.details).toMatch(/larger than max/);
    expect(await echoRoundTrip(c)).toBe('still served');
  });

  it('PINGs with no call open, more often than allowed: GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and closed; other clients served', async () => {
    const session = http2.connect(`https://localhost:${port('grpc')}`, { ca: ca.cert, host: '127.0.0.1', servername: 'localhost' } as http2.SecureClientSessionOptions);
    session.on('error', () => {});
    await once(session, 'connect');
    const goaway = new Promise<{ code: number; data: string }>((resolve) =>
      session.once('goaway', (code: number, _last: number, data?: Buffer) => resolve({ code, data: data?.toString() ?? '' })),
    );
    let acked = 0;
    for (let i = 0; i < 10 && !session.closed && !session.destroyed; i++) {
      await new Promise<void>((resolve) => {
        if (!session.ping((err) => (err ? resolve() : (acked++, resolve())))) resolve();
      });
    }
    const got = await Promise.race([goaway, new Promise<undefined>((r) => setTimeout(() => r(undefined), BOUND_MS).unref())]);
    expect(got).toEqual({ code: http2.constants.NGHTTP2_ENHANCE_YOUR_CALM, data: 'too_many_pings' });
    expect(acked).toBeLessThan(10);
    session.destroy();
    expect(await refused('grpc', 'too-many-pings')).toBe(1);
    expect(await echoRoundTrip(client())).toBe('still served');
  });
});

/** The first bytes a TLS client sends (its ClientHello). */
async function clientHello(): Promise<Buffer> {
  const capture = net.createServer();
  capture.listen(0, '127.0.0.1');
  await once(capture, 'listening');
  const got = once(capture, 'connection').then(async ([s]) => {
    const [data] = (await once(s as net.Socket, 'data')) as [Buffer];
    (s as net.Socket).destroy();
    return data;
  });
  const t = tls.connect({ host: '127.0.0.1', port: (capture.address() as net.AddressInfo).port, servername: 'localhost' });
  t.on('error', () => {});
  const data = await got;
  t.destroy();
  capture.close();
  await once(capture, 'close');
  return data;
}
