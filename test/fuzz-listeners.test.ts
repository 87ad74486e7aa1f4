/**
 * Hostile input against every listener: the server's frontend (CONNECT and
 * L7), agent gateway, health and admin ports, and the agent's health port.
 * A corpus of malformed request lines, targets and headers, plus generated
 * ones. After each batch: both processes are alive, every answer was a 4xx
 * (corpus) or not a 5xx (generated), or a closed connection, a normal
 * request still works, and the tunnel was never dropped.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Member, type ServerProc, cli, expectIdle, startMember, startServerProc, stopMembers, tmpDir } from './harness.js';

const TOKEN = 'fuzz-token';
let dir: string;
let certDir: string;
let server: ServerProc;
let member: Member;
let agentHealth: number;
let hubCA: string;
let agentCert: { cert: string; key: string };
let clientCert: { cert: string; key: string };

interface Listener {
  name: string;
  port: () => number;
  /** TLS options, or undefined for plain HTTP. */
  tls?: () => tls.ConnectionOptions;
  /** A request this listener serves normally, and the status it answers. */
  normal: string;
  normalStatus: number;
}

const read = (f: string) => fs.readFileSync(path.join(certDir, f), 'utf8');

const listeners: Listener[] = [
  {
    name: 'frontend',
    port: () => server.proxy,
    tls: () => ({ ca: hubCA, servername: 'localhost' }),
    normal: `GET /clusters/member-1/version HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer ${TOKEN}\r\nConnection: close\r\n\r\n`,
    normalStatus: 200,
  },
  {
    name: 'agent gateway (agent certificate)',
    port: () => server.agent,
    tls: () => ({ ca: hubCA, servername: 'localhost', ...agentCert }),
    normal: 'GET /connect HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n',
    normalStatus: 426,
  },
  {
    name: 'agent gateway (client certificate)',
    port: () => server.agent,
    tls: () => ({ ca: hubCA, servername: 'localhost', ...clientCert }),
    normal: 'GET /connect HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n',
    normalStatus: 426,
  },
  { name: 'server health', port: () => server.health, normal: 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', normalStatus: 200 },
  { name: 'admin', port: () => server.admin, normal: 'GET /clusters HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', normalStatus: 200 },
  { name: 'agent health', port: () => agentHealth, normal: 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', normalStatus: 200 },
];

const auth = `Authorization: Bearer ${TOKEN}\r\nProxy-Authorization: Bearer ${TOKEN}\r\n`;
const ws = 'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n';

/** Malformed requests, each of which must be answered 4xx or closed. */
const CORPUS: string[] = [
  'GET //[ HTTP/1.1\r\nHost: x\r\n\r\n',
  'GET //[/clusters HTTP/1.1\r\nHost: x\r\n\r\n',
  'GET /clusters/%/ca.crt HTTP/1.1\r\nHost: x\r\n\r\n',
  'GET /clusters/%E0%A4%A/ca.crt HTTP/1.1\r\nHost: x\r\n\r\n',
  'GET /clusters/%ZZ/version HTTP/1.1\r\nHost: x\r\n' + auth + '\r\n',
  'GET /clusters/%/version HTTP/1.1\r\nHost: x\r\n' + auth + '\r\n',
  `GET http://[/ HTTP/1.1\r\nHost: x\r\nX-Cluster-Name: member-1\r\n${auth}\r\n`,
  `GET http://member-1/version HTTP/1.1\r\nHost: member-1\r\nX-Cluster-Name: member-1\r\n${auth}\r\n`,
  `GET http://[/connect HTTP/1.1\r\nHost: x\r\n${ws}Sec-WebSocket-Protocol: kubetunnel.v1\r\n\r\n`,
  `GET //[/connect HTTP/1.1\r\nHost: x\r\n${ws}Sec-WebSocket-Protocol: kubetunnel.v1\r\n\r\n`,
  `GET %/connect HTTP/1.1\r\nHost: x\r\n${ws}\r\n`,
  `GET /connect HTTP/1.1\r\nHost: x\r\n${ws}Sec-WebSocket-Protocol: kubetunnel.v1\r\nX-Kubetunnel-Cluster: NOT A NAME\r\n\r\n`,
  `GET http://[/ HTTP/1.1\r\nHost: x\r\nX-Cluster-Name: member-1\r\n${auth}${ws}\r\n`,
  `GET //[ HTTP/1.1\r\nHost: x\r\n${ws}\r\n`,
  'GET * HTTP/1.1\r\nHost: x\r\n\r\n',
  'OPTIONS * HTTP/1.1\r\nHost: x\r\nX-Cluster-Name: member-1\r\n' + auth + '\r\n',
  'GET x:1 HTTP/1.1\r\nHost: x\r\nX-Cluster-Name: member-1\r\n' + auth + '\r\n',
  'CONNECT / HTTP/1.1\r\nHost: x\r\n' + auth + '\r\n',
  'CONNECT [::1 HTTP/1.1\r\nHost: x\r\n' + auth + '\r\n',
  'CONNECT :443 HTTP/1.1\r\nHost: x\r\n' + auth + '\r\n',
  'CONNECT member-1:99999 HTTP/1.1\r\nHost: x\r\n' + auth + '\r\n',
  'CONNECT member-1:443 HTTP/1.1\r\nHost: x\r\nX-Cluster-Name: Member_1\r\n' + auth + '\r\n',
  'CONNECT member-1:443 HTTP/1.1\r\nHost: x\r\nX-Cluster-Name: a\r\nX-Cluster-Name: b\r\n' + auth + '\r\n',
  'CONNECT member-1:443 HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic %%%\r\n\r\n',
  'CONNECT member-1:443 HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer\r\n\r\n',
  'CONNECT member-1:443 HTTP/1.1\r\nHost: x\r\nX-Cluster-Name: member-1\r\n obs-fold\r\n' + auth + '\r\n',
  'CONNECT http://member-1:443/ HTTP/1.1\r\nHost: x\r\n' + auth + '\r\n',
  'GET /clusters/member-1/version HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n' + auth + '\r\n',
  'GET /clusters/member-1/version HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n' + auth + '\r\n',
  'POST /clusters/member-1/version HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n' + auth + '\r\nzz\r\n',
  'POST /clusters/member-1/version HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n' + auth + '\r\nzz\r\n\r\n',
  'POST /clusters/member-1/version HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked, identity\r\n' + auth + '\r\n0\r\n\r\n',
  `GET /clusters/member-1/api/v1/namespaces/default/pods/echo/exec HTTP/1.1\r\nHost: x\r\n${auth}${ws}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
  'GET /clusters/member-1/version HTTP/1.1\r\nHost: x\r\nX-Big: ' + 'a'.repeat(20_000) + '\r\n' + auth + '\r\n',
  'GET /' + 'a'.repeat(20_000) + ' HTTP/1.1\r\nHost: x\r\n\r\n',
  'GET /clusters/member-1/version HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \u0001\r\n\r\n',
  'GET / HTTP/1.1\r\nHost: x\r\nX: a\u0000b\r\n\r\n',
  'GET /\u0000 HTTP/1.1\r\nHost: x\r\n\r\n',
  'GET / HTTP/1.1\nHost: x\n\n',
  'GET / HTTP/1.1\rHost: x\r\r',
  'GET /\r\n\r\n',
  'GET / HTTP/9.9\r\nHost: x\r\n\r\n',
  'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
  'FOO / HTTP/1.1\r\nHost: x\r\n\r\n',
  ' / HTTP/1.1\r\nHost: x\r\n\r\n',
  '\r\n\r\n\r\n\r\n',
  'GET / HTTP/1.1\r\n: empty-name\r\n\r\n',
  'GET / HTTP/1.1\r\nHost x\r\n\r\n',
  'GET /clusters/-bad-/version HTTP/1.1\r\nHost: x\r\n' + auth + '\r\n',
  'GET /version HTTP/1.1\r\nHost: x\r\nX-Cluster-Name: ../etc\r\n' + auth + '\r\n',
  'GET /clusters/member-1/version?%zz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\r\n',
  'GET /clusters/member-1/version HTTP/1.1\r\nHost: x\r\nAuthorization: Basic ' + Buffer.from('\u00ff\u00fe:x', 'latin1').toString('base64') + '\r\n\r\n',
  'GET /clusters/member-1/version HTTP/1.1\r\nHost: x\r\nConnection: close, authorization, x-cluster-name\r\nAuthorization: Bearer wrong\r\n\r\n',
  'GET /nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n',
  '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03' + '\x00'.repeat(40),
  '\x00\x01\x02\x03\xff\xfe\xfd',
];

interface Answer {
  status: number;
  closed: boolean;
}

/**
 * Sends raw bytes on a new connection and reads the status line. A client
 * that gets no answer within 2 s half-closes (an incomplete request waits
 * for its body until then); after that, the server must answer or close
 * within 10 s.
 */
async function send(l: Listener, bytes: string): Promise<Answer> {
  const socket: net.Socket = l.tls ? tls.connect({ host: '127.0.0.1', port: l.port(), ...l.tls() }) : net.connect(l.port(), '127.0.0.1');
  socket.on('error', () => {});
  const timers: NodeJS.Timeout[] = [];
  try {
    // Connected, or refused (a failed handshake is a closed connection too).
    await new Promise<void>((resolve) => {
      socket.once(l.tls ? 'secureConnect' : 'connect', () => resolve());
      socket.once('close', () => resolve());
    });
    if (socket.destroyed) return { status: 0, closed: true };
    let data = '';
    const outcome = new Promise<Answer>((resolve) => {
      const status = () => Number(/^HTTP\/1\.1 (\d{3})/.exec(data)?.[1] ?? 0);
      socket.on('data', (c: Buffer) => {
        data = (data + c.toString('latin1')).slice(0, 256);
        if (status() !== 0) resolve({ status: status(), closed: true });
      });
      socket.once('close', () => resolve({ status: status(), closed: true }));
      timers.push(setTimeout(() => socket.end(), 2000));
      timers.push(setTimeout(() => resolve({ status: status(), closed: false }), 12_000));
    });
    socket.write(Buffer.from(bytes, 'latin1'));
    return await outcome;
  } finally {
    for (const t of timers) clearTimeout(t);
    socket.destroy();
  }
}

function expectAlive(): void {
  expect(server.proc.child.exitCode, 'server process').toBeNull();
  expect(member.agent.child.exitCode, 'agent process').toBeNull();
}

async function expectNormal(l: Listener): Promise<void> {
  const a = await send(l, l.normal);
  expect(a.status, `${l.name}: a normal request`).toBe(l.normalStatus);
}

/** Runs `cases` against `l` a few at a time; returns the answers. */
async function barrage(l: Listener, cases: string[]): Promise<Answer[]> {
  const answers: Answer[] = [];
  for (let i = 0; i < cases.length; i += 48) answers.push(...(await Promise.all(cases.slice(i, i + 48).map((c) => send(l, c)))));
  return answers;
}

/** Pieces the generated requests are made of: the characters that broke parsers before, and plain ones. */
const piece = fc.constantFrom('/', '//', '[', ']', '%', '%2', '%zz', '%00', '?', '#', ':', '@', '..', 'clusters', 'member-1', 'connect', 'healthz', 'clusters/member-1', 'a', '*', 'http://', '\u00e9', '\u5f00', ' ', ';', '\\');
const target = fc.array(piece, { minLength: 0, maxLength: 8 }).map((p) => p.join(''));
const method = fc.constantFrom('GET', 'POST', 'CONNECT', 'PUT', 'DELETE', 'OPTIONS', 'HEAD', 'get', 'PRI', 'X');
const header = fc.oneof(
  fc.constantFrom('Host: x', 'X-Cluster-Name: member-1', `Authorization: Bearer ${TOKEN}`, `Proxy-Authorization: Bearer ${TOKEN}`, 'Connection: Upgrade', 'Upgrade: websocket', 'Upgrade: SPDY/3.1', 'Transfer-Encoding: chunked', 'Content-Length: 0', 'Content-Length: 7', 'Sec-WebSocket-Protocol: kubetunnel.v1', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version: 13', 'X-Kubetunnel-Cluster: member-1', 'X-Kubetunnel-Agent-Id: a'),
  fc.tuple(fc.constantFrom('X-Cluster-Name', 'Host', 'Content-Length', 'Authorization', 'Upgrade', 'X-Kubetunnel-Allow-Dest'), target).map(([k, v]) => `${k}: ${v}`),
);
const generated = fc
  .tuple(method, target, fc.constantFrom('HTTP/1.1', 'HTTP/1.0', 'HTTP/1.1 x', ''), fc.array(header, { maxLength: 6 }), fc.constantFrom('', '0\r\n\r\n', 'abc', '\u0000'))
  .map(([m, t, v, hs, body]) => `${m} ${t} ${v}\r\n${hs.map((h) => h + '\r\n').join('')}\r\n${body}`);

beforeAll(async () => {
  dir = tmpDir();
  certDir = path.join(dir, 'certs');
  await cli('certs', 'init', '--dir', certDir);
  await cli('certs', 'client', '--dir', certDir, '--user', 'fuzzer');
  fs.writeFileSync(path.join(dir, 'tokens.csv'), `${TOKEN},fuzzer,1\n`);
  hubCA = read('ca.crt');
  clientCert = { cert: read('client-fuzzer.crt'), key: read('client-fuzzer.key') };
  server = await startServerProc(certDir, ['--token-file', path.join(dir, 'tokens.csv')]);
  // An L7-capable agent, so that L7 requests reach the agent's side too.
  fs.writeFileSync(path.join(dir, 'agent-token'), 'agent-sa-token\n');
  member = await startMember({
    dir,
    certDir,
    server,
    name: 'member-1',
    tokens: { 'agent-sa-token': { user: 'system:serviceaccount:kubetunnel:agent', groups: ['system:serviceaccounts'] } },
    impersonators: ['system:serviceaccount:kubetunnel:agent'],
    agentArgs: ['--apiserver-token-file', path.join(dir, 'agent-token')],
  });
  agentCert = { cert: read('agent-member-1.crt'), key: read('agent-member-1.key') };
  agentHealth = await member.agent.listenerPort('health');
});

afterAll(async () => {
  await stopMembers(server, member ? [member] : []);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('hostile requests against every listener', () => {
  const counts: Record<string, number> = {};

  it.each(listeners.map((l) => [l.name, l] as const))('%s: the corpus is answered 4xx or closed; nothing else breaks', async (_name, l) => {
    await expectNormal(l);
    const answers = await barrage(l, CORPUS);
    const bad = answers.map((a, i) => ({ ...a, request: CORPUS[i]!.slice(0, 80) })).filter((a) => !a.closed || (a.status !== 0 && (a.status < 400 || a.status >= 500)));
    expect(bad).toEqual([]);
    expectAlive();
    await expectNormal(l);
    counts[l.name] = (counts[l.name] ?? 0) + CORPUS.length;
  });

  it.each(listeners.map((l) => [l.name, l] as const))('%s: 300 generated requests: no 5xx, no hang, nothing else breaks', async (_name, l) => {
    const cases = fc.sample(generated, { numRuns: 300, seed: 0x6b74 + l.name.length });
    const answers = await barrage(l, cases);
    const bad = answers.map((a, i) => ({ ...a, request: cases[i]!.slice(0, 120) })).filter((a) => !a.closed || a.status >= 500);
    expect(bad).toEqual([]);
    expectAlive();
    await expectNormal(l);
    counts[l.name] = (counts[l.name] ?? 0) + cases.length;
  });

  it('the tunnel was never dropped, and the server is idle', async () => {
    expect(server.proc.count((l) => l.msg === 'agent registered')).toBe(1);
    expect(server.proc.count((l) => l.msg === 'agent disconnected')).toBe(0);
    await expectIdle(server.adminUrl);
    console.log(`hostile requests per listener: ${JSON.stringify(counts)}`);
  });
});
