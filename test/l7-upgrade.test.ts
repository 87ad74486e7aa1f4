/**
 * L7 upgrades and answers that must pass through untouched, against an
 * upstream written here: a SPDY/3.1 upgrade is relayed both ways (kubectl's
 * protocol for exec and port-forward before WebSockets), and a redirect is
 * handed to the client, never followed. The agent's connections to the
 * upstream run without Nagle delay.
 */
import diagnostics from 'node:diagnostics_channel';
import { once } from 'node:events';
import fs from 'node:fs';
import https from 'node:https';
import { Socket, type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Agent } from '@kubetunnel/agent';
import { startServer, type KubetunnelServer } from '@kubetunnel/server';
import { createCA, EndAfterRead, issueAgentCert, issueServerCert, silentLogger } from '@kubetunnel/shared';
import { noDelayOf, startRegisteredAgent, testAgentConfig, testServerConfig } from './fixtures.js';

const hubCA = createCA();
const hubCert = issueServerCert(hubCA, { sans: ['localhost'] });
const memberCA = createCA();
const memberCert = issueServerCert(memberCA, { sans: ['127.0.0.1'] });

let upstream: https.Server;
const upstreamPaths: string[] = [];
let server: KubetunnelServer;
let agent: Agent;
let dir: string;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'l7u-'));
  fs.writeFileSync(path.join(dir, 'token'), 'agent-token');
  upstream = https.createServer({ cert: memberCert.cert, key: memberCert.key }, (req, res) => {
    upstreamPaths.push(req.url!);
    if (req.url === '/redirect') {
      res.writeHead(302, { Location: 'https://elsewhere.example/steal' });
      return res.end();
    }
    res.end('plain');
  });
  upstream.on('upgrade', (req, socket) => {
    upstreamPaths.push(req.url!);
    // SPDY/3.1 as kubectl asks for it: answer 101 and echo what follows.
    socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n');
    socket.pipe(socket);
  });
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  server = await startServer(testServerConfig(hubCA, hubCert, new Map([['t', { user: 'alice', uid: '1', groups: [] }]])), silentLogger());
  const pem = issueAgentCert(hubCA, { cluster: 'm' });
  agent = await startRegisteredAgent(
    server,
    testAgentConfig(server, hubCA, pem, 'm', `https://127.0.0.1:${(upstream.address() as AddressInfo).port}`, {
      apiserverCA: memberCA.cert,
      apiserverTokenFile: path.join(dir, 'token'),
    }),
  );
});

afterAll(async () => {
  await agent.close();
  await server.close();
  upstream.closeAllConnections();
  upstream.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function hub(): Promise<tls.TLSSocket> {
  const s = tls.connect({ host: '127.0.0.1', port: server.addresses.proxy.port, ca: hubCA.cert, servername: 'localhost' });
  await once(s, 'secureConnect');
  return s;
}

function readUntil(socket: tls.TLSSocket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (d: Buffer) => {
      got += d.toString('latin1');
      if (got.includes(text)) {
        socket.off('data', onData);
        resolve(got);
      }
    };
    socket.on('data', onData);
    socket.once('close', () => reject(new Error(`closed before "${text}": ${got}`)));
  });
}

describe('L7 passthrough', () => {
  it('relays a SPDY/3.1 upgrade: the 101 passes and bytes flow both ways', async () => {
    const s = await hub();
    s.write(
      'POST /clusters/m/api/v1/namespaces/default/pods/echo/exec?command=cat HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer t\r\n' +
        'Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n',
    );
    const head = await readUntil(s, '\r\n\r\n');
    expect(head).toMatch(/^HTTP\/1\.1 101 /);
    expect(head).toMatch(/\r\nUpgrade: SPDY\/3\.1\r\n/i);
    const frame = Buffer.from([0x80, 0x03, 0x00, 0x01, 0x01, 0x02, 0x03, 0xff]).toString('latin1');
    const echoed = readUntil(s, frame);
    s.write(Buffer.from(frame, 'latin1'));
    expect(await echoed).toContain(frame);
    s.destroy();
    expect(upstreamPaths.at(-1)).toBe('/api/v1/namespaces/default/pods/echo/exec?command=cat');
  });

  it('hands a redirect to the client and never follows it', async () => {
    const s = await hub();
    s.write('GET /clusters/m/redirect HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n');
    const answer = await readUntil(s, '\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 302 /);
    expect(answer).toMatch(/\r\nlocation: https:\/\/elsewhere\.example\/steal\r\n/i);
    s.destroy();
    expect(upstreamPaths.filter((p) => p.includes('steal'))).toEqual([]);
  });

  it('sends to the upstream without Nagle delay, plain requests and upgrades alike', async () => {
    // The agent runs in this process: the connections it sends requests to
    // the upstream on are seen here, plain requests' from its pool (undici's
    // channel), upgrades' from Node's HTTP client. Node keeps a socket's TCP_NODELAY setting in
    // its kSetNoDelay field (false until setNoDelay(true)).
    const upstreamPort = (upstream.address() as AddressInfo).port;
    const sockets: Socket[] = [];
    // undici is given each connection wrapped (EndAfterRead); the hub's undici sends on tunnel streams, not sockets.
    const onSendHeaders = ({ socket }: { socket: Duplex }) => void (socket instanceof EndAfterRead && socket.inner instanceof Socket && sockets.push(socket.inner));
    const onStart = ({ request }: { request: { socket: Socket | null } }) => void (request.socket && sockets.push(request.socket));
    /** Nagle off or on, for each connection the agent sent a request on since the last call. */
    const upstreamNoDelay = () => sockets.splice(0).filter((s) => s.remotePort === upstreamPort).map(noDelayOf);
    diagnostics.subscribe('undici:client:sendHeaders', onSendHeaders as (message: unknown) => void);
    diagnostics.subscribe('http.client.request.start', onStart as (message: unknown) => void);
    try {
      const plain = await hub();
      plain.write('GET /clusters/m/plain HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n');
      expect(await readUntil(plain, 'plain')).toMatch(/^HTTP\/1\.1 200 /);
      expect(upstreamNoDelay()).toEqual([true]);
      plain.destroy();
      const upgraded = await hub();
      upgraded.write(
        'POST /clusters/m/api/v1/namespaces/default/pods/echo/exec?command=cat HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer t\r\n' +
          'Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n',
      );
      expect(await readUntil(upgraded, '\r\n\r\n')).toMatch(/^HTTP\/1\.1 101 /);
      expect(upstreamNoDelay()).toEqual([true]);
      upgraded.destroy();
    } finally {
      diagnostics.unsubscribe('undici:client:sendHeaders', onSendHeaders as (message: unknown) => void);
      diagnostics.unsubscribe('http.client.request.start', onStart as (message: unknown) => void);
    }
  });
});

