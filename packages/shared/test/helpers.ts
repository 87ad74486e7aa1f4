import { generateKeyPairSync } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import forge from 'node-forge';
import { afterEach, beforeEach, expect } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import type { Pem } from '../src/pki/index.js';
import { MemoryTransport, Session, WsTransport, type IncomingOpen, type MuxStream, type SessionOptions } from '../src/mux/index.js';
import { SUBPROTOCOL } from '../src/protocol/index.js';

export interface Pair {
  server: Session;
  agent: Session;
  /** The agent's raw WebSocket (ws pairs only). */
  agentWs?: WebSocket;
  close(): Promise<void>;
}

type Opts = Omit<SessionOptions, 'role'>;

/** Opens a tcp stream from the server that the agent accepts; resolves with both ends. */
export async function openAccepted(p: Pair): Promise<[MuxStream, MuxStream]> {
  const accepted = new Promise<MuxStream>((resolve) => p.agent.once('open', (inc: IncomingOpen) => resolve(inc.accept())));
  const s = await p.server.open({ kind: 'tcp', target: 'apiserver' });
  return [s, await accepted];
}

/** Asserts that neither session of `p` holds an open stream or an open in progress. */
export function expectPairIdle(p: Pair): void {
  expect(p.server.openStreams).toBe(0);
  expect(p.server.pendingOpens).toBe(0);
  expect(p.agent.openStreams).toBe(0);
  expect(p.agent.pendingIncoming).toBe(0);
}

export function memoryPair(opts: Opts = {}): Pair {
  const [a, b] = MemoryTransport.pair();
  const server = new Session(a, { ...opts, role: 'server' });
  const agent = new Session(b, { ...opts, role: 'agent' });
  return {
    server,
    agent,
    async close() {
      server.close();
      agent.close();
      await new Promise((r) => setImmediate(r));
    },
  };
}

/** Two sessions over a real WebSocket on 127.0.0.1, port 0. */
export async function wsPair(opts: Opts = {}, agentOpts: Opts = opts): Promise<Pair> {
  const httpServer = http.createServer();
  const wss = new WebSocketServer({ server: httpServer, perMessageDeflate: false, maxPayload: 4 << 20 });
  httpServer.listen(0, '127.0.0.1');
  await once(httpServer, 'listening');
  const port = (httpServer.address() as AddressInfo).port;
  const accepted = once(wss, 'connection');
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, SUBPROTOCOL, { perMessageDeflate: false });
  await once(ws, 'open');
  const [serverWs] = (await accepted) as [WebSocket];
  const server = new Session(new WsTransport(serverWs), { ...opts, role: 'server' });
  const agent = new Session(new WsTransport(ws), { ...agentOpts, role: 'agent' });
  return {
    server,
    agent,
    agentWs: ws,
    async close() {
      server.close();
      agent.close();
      for (const w of [ws, serverWs]) if (w.readyState !== WebSocket.CLOSED) w.terminate();
      wss.close();
      httpServer.closeAllConnections();
      await new Promise<void>((r) => httpServer.close(() => r()));
    },
  };
}

/** Resources that keep the event loop alive, by kind (sockets, servers, timers). */
export function liveResources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const r of process.getActiveResourcesInfo()) counts[r] = (counts[r] ?? 0) + 1;
  return counts;
}

/** Waits until the live resources are back to `before` (they close asynchronously). */
export async function expectNoLeaks(before: Record<string, number>, timeoutMs = 3000): Promise<void> {
  const kinds = ['TCPSocketWrap', 'TCPServerWrap', 'Timeout', 'TLSWrap', 'Immediate'];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const now = liveResources();
    const extra = kinds.filter((k) => (now[k] ?? 0) > (before[k] ?? 0));
    if (extra.length === 0) return;
    if (Date.now() > deadline) throw new Error(`leaked resources: ${extra.map((k) => `${k} ${now[k]} > ${before[k] ?? 0}`).join(', ')}`);
    await new Promise((r) => setImmediate(r));
  }
}

/** What one test leaves for its clean-up: the pair it used, and what else to close. */
export interface TestScope {
  /** Notes `pair` as this test's: after the test it must be idle, then it is closed. */
  use(pair: Pair): Pair;
  readonly cleanups: Array<() => void>;
}

/**
 * Registers a clean-up after every test of the file: runs the test's
 * cleanups, checks its pair is idle and closes it, and waits until nothing
 * the test opened (sockets, servers, timers) is left.
 */
export function cleanEachTest(): TestScope {
  let pair: Pair | undefined;
  let before: Record<string, number> = {};
  const cleanups: Array<() => void> = [];
  beforeEach(() => {
    before = liveResources();
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0)) c();
    if (pair) {
      expectPairIdle(pair);
      await pair.close();
      pair = undefined;
    }
    await expectNoLeaks(before);
  });
  return {
    use: (p) => (pair = p),
    cleanups,
  };
}

/**
 * Reads a stream's readable side to the end without destroying it (a
 * `for await` loop would destroy the whole duplex when the loop ends).
 */
export function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
  });
}

/** Resolves with the stream's error (or null) once it has closed; never rejects. */
export function closed(stream: NodeJS.EventEmitter & { errored?: Error | null; closed?: boolean }): Promise<Error | null> {
  if (stream.closed) return Promise.resolve(stream.errored ?? null);
  return new Promise((resolve) => stream.once('close', () => resolve(stream.errored ?? null)));
}

/**
 * A certificate signed by `ca` with forge directly, for names and usages the
 * issue* functions refuse; valid for an hour. `altNames` are forge's
 * subjectAltName entries (type 2 DNS, 6 URI, 7 IP).
 */
export function forgeCert(
  ca: Pem,
  o: { commonName: string; serial: string; eku: { clientAuth?: boolean; serverAuth?: boolean }; altNames?: Array<{ type: number; value?: string; ip?: string }> },
): Pem {
  const keyPem = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
  const key = forge.pki.privateKeyFromPem(keyPem) as forge.pki.rsa.PrivateKey;
  const caCert = forge.pki.certificateFromPem(ca.cert);
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.setRsaPublicKey(key.n, key.e);
  cert.serialNumber = o.serial;
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 3_600_000);
  cert.setSubject([{ name: 'commonName', value: o.commonName }]);
  cert.setIssuer(caCert.subject.attributes);
  cert.setExtensions([
    { name: 'extKeyUsage', ...o.eku },
    ...(o.altNames && o.altNames.length > 0 ? [{ name: 'subjectAltName', altNames: o.altNames }] : []),
  ]);
  cert.sign(forge.pki.privateKeyFromPem(ca.key) as forge.pki.rsa.PrivateKey, forge.md.sha256.create());
  return { cert: forge.pki.certificateToPem(cert), key: keyPem };
}
