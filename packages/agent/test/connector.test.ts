/**
 * The connector's dials against a hub it cannot reach, or one that answers
 * the handshake with a status, or completes it at a replica already held:
 * which wait comes next, from which backoff, and that each dial schedules
 * exactly one next one. The hub is a TLS WebSocket listener on 127.0.0.1
 * that answers as each test says; the jitter is fixed at half of the cap.
 */
import { EventEmitter, once } from 'node:events';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Duplex } from 'node:stream';
import type { IncomingMessage } from 'node:http';
import { pino } from 'pino';
import { WebSocket, WebSocketServer } from 'ws';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { X509Certificate } from 'node:crypto';
import { RegistrationHeaders as H, SUBPROTOCOL, createCA, issueAgentCert, issueServerCert, respondRaw } from '@kubetunnel/shared';
import { Connector } from '../src/connector.js';
import type { AgentConfig } from '../src/config.js';
import { DialAttempt, type DialState } from '../src/dial-attempt.js';
import { expectNoLeaks, liveResources } from '../../shared/test/helpers.js';

const ca = createCA();
const serverPem = issueServerCert(ca, { sans: ['localhost'] });
const agentPem = issueAgentCert(ca, { cluster: 'member-1' });

/** How the fake hub answers the n-th handshake (0-based). */
type Answer = { status: number; reason: string } | { accept: true; serverId?: string };

interface Hub {
  port: number;
  /** Handshakes received so far. */
  dials: number;
  /** When each arrived (performance.now()). */
  dialTimes: number[];
  /** WebSockets the hub accepted, in order. */
  accepted: WebSocket[];
  /** The SHA-256 fingerprint of the client certificate each handshake came with. */
  clientCerts: string[];
  close(): Promise<void>;
}

async function startHub(answer: (n: number) => Answer): Promise<Hub> {
  const server = https.createServer({ cert: serverPem.cert, key: serverPem.key, ca: ca.cert, requestCert: true, rejectUnauthorized: true });
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  const hub: Hub = {
    port: 0,
    dials: 0,
    dialTimes: [],
    accepted: [],
    clientCerts: [],
    async close() {
      for (const ws of hub.accepted) ws.terminate();
      wss.close();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => {});
    hub.dialTimes.push(performance.now());
    hub.clientCerts.push((req.socket as TLSSocket).getPeerCertificate().fingerprint256);
    const a = answer(hub.dials++);
    if (!('accept' in a)) return respondRaw(socket, a.status, a.reason);
    const id = a.serverId;
    wss.once('headers', (headers) => {
      if (id) headers.push(`${H.serverId}: ${id}`, `${H.serverCount}: 1`);
    });
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('error', () => {});
      hub.accepted.push(ws);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  hub.port = (server.address() as AddressInfo).port;
  return hub;
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = https.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

function config(port: number, backoff = { initialMs: 20, maxMs: 1000 }): AgentConfig {
  return {
    servers: [`wss://localhost:${port}`],
    cluster: 'member-1',
    agentId: 'a1',
    cert: agentPem.cert,
    key: agentPem.key,
    ca: ca.cert,
    apiserver: new URL('https://127.0.0.1:1'),
    allowDest: [],
    healthPort: 0,
    healthHost: '127.0.0.1',
    gracePeriodMs: 1000,
    backoff,
    dialTimeoutMs: 1000,
  };
}

interface Line {
  msg: string;
  retryInMs?: number;
  status?: number;
  reason?: string;
}

/** The connector's log lines, and a wait for the n-th line with a given message. */
function logLines() {
  const lines: Line[] = [];
  const seen = new EventEmitter();
  const log = pino({ level: 'debug' }, {
    write: (text: string) => {
      const line = JSON.parse(text) as Line;
      lines.push(line);
      seen.emit('line', line);
    },
  });
  const with_ = (msg: string) => lines.filter((l) => l.msg === msg);
  const until = async (msg: string, n = 1) => {
    while (with_(msg).length < n) await once(seen, 'line');
  };
  return { log, lines, with: with_, until };
}

let before: Record<string, number>;
let connector: Connector | undefined;
let hub: Hub | undefined;

beforeEach(() => {
  before = liveResources();
});

afterEach(async () => {
  connector?.close();
  connector = undefined;
  await hub?.close();
  hub = undefined;
  await expectNoLeaks(before);
});

const half = () => 0.5;

describe('Connector dials', () => {
  it('a server it cannot reach: each failed dial draws one wait from the backoff, so the waits double', async () => {
    const { log, with: withMsg, until } = logLines();
    connector = new Connector(config(await closedPort()), () => {}, log, half);
    connector.start();
    await until('could not reach server', 4);
    connector.close();
    // Caps 20, 40, 80, 160 ms; the jitter takes half of each.
    expect(withMsg('could not reach server').map((l) => l.retryInMs)).toEqual([10, 20, 40, 80]);
  });

  it('409 (a replica already held): the short rebalance wait, and the failure backoff is left where it was', async () => {
    const { log, with: withMsg, until } = logLines();
    hub = await startHub((n) => (n < 2 ? { status: 409, reason: 'already held' } : { accept: true, serverId: 's1' }));
    connector = new Connector(config(hub.port), () => {}, log, half);
    connector.start();
    await until('tunnel up');
    expect(withMsg('landed on a server already held').map((l) => l.retryInMs)).toEqual([10, 20]);
    hub.accepted[0]!.terminate();
    await until('tunnel down');
    // The first wait of the failure backoff: neither 409 drew from it.
    expect(withMsg('tunnel down').map((l) => l.retryInMs)).toEqual([10]);
    await until('tunnel up', 2);
    expect(hub.dials).toBe(4);
  });

  it('a refusal (403) is logged with its reason and dialed again once, after the longest wait', async () => {
    const { log, with: withMsg, until } = logLines();
    hub = await startHub((n) => (n === 0 ? { status: 403, reason: 'certificate names cluster "member-2"' } : { accept: true, serverId: 's1' }));
    connector = new Connector(config(hub.port, { initialMs: 20, maxMs: 200 }), () => {}, log, half);
    connector.start();
    await until('tunnel up');
    expect(withMsg('server refused registration')).toMatchObject([{ status: 403, reason: 'certificate names cluster "member-2"' }]);
    expect(withMsg('could not reach server')).toEqual([]);
    expect(hub.dials).toBe(2);
    // max() of a 200 ms backoff with the jitter at half: 150 ms (the failure backoff would wait 10).
    expect(hub.dialTimes[1]! - hub.dialTimes[0]!).toBeGreaterThanOrEqual(100);
    expect(connector.sessions().map((s) => s.serverId)).toEqual(['s1']);
  });

  it('updateTls: the dials after it present the new certificate; the config it was built with is left as it was', async () => {
    const { log, until } = logLines();
    const renewed = issueAgentCert(ca, { cluster: 'member-1' });
    const fingerprint = (pem: string) => new X509Certificate(pem).fingerprint256;
    hub = await startHub((n) => (n === 0 ? { status: 409, reason: 'already held' } : { accept: true, serverId: 's1' }));
    const built = config(hub.port);
    connector = new Connector(built, () => {}, log, half);
    connector.start();
    await until('landed on a server already held');
    connector.updateTls({ cert: renewed.cert, key: renewed.key, ca: ca.cert });
    await until('tunnel up');
    expect(hub.clientCerts).toEqual([fingerprint(agentPem.cert), fingerprint(renewed.cert)]);
    expect(built.cert).toBe(agentPem.cert);
  });

  it('a handshake that completes at a replica already held is closed at once; only the tunnel it then gets stays', async () => {
    const { log, with: withMsg, until } = logLines();
    // The first answer names no server id (as a replica already held), the second does.
    hub = await startHub((n) => ({ accept: true, ...(n === 0 ? {} : { serverId: 's1' }) }));
    connector = new Connector(config(hub.port), () => {}, log, half);
    connector.start();
    await until('tunnel up');
    const [first, second] = hub.accepted;
    if (first!.readyState !== WebSocket.CLOSED) await once(first!, 'close');
    expect(withMsg('landed on a server already held').map((l) => l.retryInMs)).toEqual([10]);
    expect(second!.readyState).toBe(WebSocket.OPEN);
    // The closed WebSocket of the first dial scheduled nothing more: one dial per tunnel wanted.
    expect(hub.dials).toBe(2);
    expect(connector.sessions().map((s) => s.serverId)).toEqual(['s1']);
  });
});

describe('DialAttempt', () => {
  const attempt = () => {
    const ends: number[] = [];
    return { a: new DialAttempt((ms) => ends.push(ms)), ends };
  };

  it('open is final: what the WebSocket reports afterwards changes nothing and draws no wait', () => {
    const { a, ends } = attempt();
    expect(a.state).toBe('connecting');
    expect(a.ended).toBe(false);
    expect(a.to('open', () => 7)).toBe(true);
    expect(a.ended).toBe(true);
    let drawn = 0;
    const draw = () => ++drawn;
    for (const next of ['failed', 'answered', 'open'] as DialState[]) expect(a.to(next, draw)).toBe(false);
    expect(a.state).toBe('open');
    expect(ends).toEqual([7]);
    expect(drawn).toBe(0);
  });

  it('an answered handshake can only fail, once', () => {
    const { a, ends } = attempt();
    expect(a.to('answered', () => 1)).toBe(true);
    expect(ends).toEqual([]);
    expect(a.to('open')).toBe(false);
    expect(a.to('answered')).toBe(false);
    expect(a.to('failed', () => 150)).toBe(true);
    expect(a.to('failed', () => 1)).toBe(false);
    expect(a.state).toBe('failed');
    expect(ends).toEqual([150]);
  });

  it('a failure (error, then close) ends the attempt once; without a wait the next dial comes at once', () => {
    const { a, ends } = attempt();
    expect(a.to('failed')).toBe(true);
    expect(a.to('failed', () => 99)).toBe(false);
    expect(a.to('open')).toBe(false);
    expect(ends).toEqual([0]);
  });
});
