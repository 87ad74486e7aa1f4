/**
 * Property: whatever headers an L7 caller sends, the member apiserver sees
 * exactly the impersonation headers the hub computed for the caller, the
 * agent's own credential, and none of the caller's credentials or identity
 * claims, over HTTP/1.1 and over HTTP/2. Server, agent and stand-in
 * apiserver run in this process; HTTP/1.1 requests are written byte for byte
 * so that letter case, duplicates and whitespace are the caller's choice,
 * HTTP/2 ones are sent by curl with the same fields.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import tls from 'node:tls';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KubetunnelServer } from '@kubetunnel/server';
import type { Pem } from '@kubetunnel/shared';
import type { StandinApiserver } from '@kubetunnel/standin-apiserver';
import { L7_AGENT_USER as AGENT_USER, startL7Member, type L7Member } from './fixtures.js';

let member: L7Member;
let hubCA: Pem;
let server: KubetunnelServer;
let api: StandinApiserver;
let caFile: string;
const run = promisify(execFile);

beforeAll(async () => {
  member = await startL7Member(new Map([['hub-token', { user: 'alice', uid: '42', groups: ['dev', 'ops'] }]]), {
    'caller-token': { user: 'mallory', groups: ['system:masters'] },
  });
  ({ hubCA, server, api } = member);
  caFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'l7headers-')), 'ca.crt');
  fs.writeFileSync(caFile, hubCA.cert);
});

afterAll(async () => {
  await member.close();
  fs.rmSync(path.dirname(caFile), { recursive: true, force: true });
});

/** Writes one HTTP/1.1 request as raw bytes over TLS; resolves with the status code. */
async function send(headerLines: string[]): Promise<number> {
  const socket = tls.connect({ host: '127.0.0.1', port: server.addresses.proxy.port, ca: hubCA.cert, servername: 'localhost' });
  await once(socket, 'secureConnect');
  socket.write(['GET /clusters/member-1/version HTTP/1.1', 'Host: hub', ...headerLines, 'Connection: close', '', ''].join('\r\n'));
  let data = '';
  socket.setEncoding('utf8');
  socket.on('data', (d: string) => (data += d));
  await once(socket, 'close');
  return Number(/^HTTP\/1\.1 (\d+)/.exec(data)?.[1] ?? 0);
}

/**
 * Sends the same header lines as one HTTP/2 request with curl (an HTTP/2
 * client that sends repeated fields as they are given; HTTP/2 has the names
 * in lower case, and no Connection header). Resolves with the status code.
 */
async function sendH2(headerLines: string[]): Promise<number> {
  const port = server.addresses.proxy.port;
  const { stdout } = await run('curl', [
    '-sS', '--http2', '-o', '/dev/null', '-w', '%{http_version} %{http_code}', '--cacert', caFile,
    '--resolve', `localhost:${port}:127.0.0.1`, ...headerLines.flatMap((line) => ['-H', line]),
    `https://localhost:${port}/clusters/member-1/version`,
  ]);
  const [version, status] = stdout.split(' ');
  expect(version).toBe('2');
  return Number(status);
}

const dangerous = [
  'Impersonate-User',
  'Impersonate-Group',
  'Impersonate-Uid',
  'Impersonate-Extra-Scopes',
  'X-Remote-User',
  'X-Remote-Group',
  'X-Remote-Extra-Foo',
  'Authorization',
  'Proxy-Authorization',
];
const caseOf = (name: string) =>
  fc.array(fc.boolean(), { minLength: name.length, maxLength: name.length }).map((ups) =>
    [...name].map((ch, i) => (ups[i] ? ch.toUpperCase() : ch.toLowerCase())).join(''),
  );
const value = fc.stringMatching(/^[A-Za-z0-9:_ -]{1,20}$/);
const space = fc.constantFrom('', ' ', '  ', '\t', ' \t ');
const headerLine = fc
  .tuple(fc.constantFrom(...dangerous, 'X-Custom'), space, value, space)
  .chain(([name, s1, v, s2]) => caseOf(name).map((n) => `${n}:${s1}${v}${s2}`));
const connectionLine = fc
  .array(fc.constantFrom(...dangerous), { minLength: 1, maxLength: 4 })
  .chain((names) => fc.tuple(...names.map(caseOf), space))
  .map((parts) => `Connection: ${parts.slice(0, -1).join(' ,' + parts[parts.length - 1])}`);

/** What the member saw of the last request, checked against what the hub computed for alice. */
function expectOnlyHubIdentity(before: number): void {
  const seen = api.requests.slice(before);
  expect(seen).toHaveLength(1);
  const r = seen[0]!;
  const raw: Array<[string, string]> = [];
  for (let i = 0; i < r.rawHeaders.length; i += 2) raw.push([r.rawHeaders[i]!.toLowerCase(), r.rawHeaders[i + 1]!]);
  const values = (n: string) => raw.filter(([k]) => k === n).map(([, v]) => v);
  expect(r.user).toBe(AGENT_USER);
  expect(r.effectiveUser).toBe('alice');
  expect(values('impersonate-user')).toEqual(['alice']);
  expect(values('impersonate-group')).toEqual(['dev', 'ops']);
  expect(values('impersonate-uid')).toEqual(['42']);
  expect(raw.filter(([k]) => k.startsWith('impersonate-extra-'))).toEqual([]);
  expect(raw.filter(([k]) => k.startsWith('x-remote-'))).toEqual([]);
  expect(raw.filter(([k]) => k === 'proxy-authorization' || k.startsWith(':'))).toEqual([]);
  expect(values('authorization')).toHaveLength(1);
}

describe('L7 header property', () => {
  it('HTTP/1.1: the member sees exactly the hub-computed impersonation and no caller credential', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(headerLine, { maxLength: 8 }), fc.option(connectionLine), async (lines, conn) => {
        const before = api.requests.length;
        // The hub credential comes first; everything after it is the caller's mischief.
        const status = await send(['Authorization: Bearer hub-token', ...lines, ...(conn ? [conn] : [])]);
        expect(status).toBe(200);
        expectOnlyHubIdentity(before);
      }),
      { numRuns: 150 },
    );
  });

  it('HTTP/2 (curl): the same', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(headerLine, { maxLength: 8 }), async (lines) => {
        const before = api.requests.length;
        const status = await sendH2(['Authorization: Bearer hub-token', ...lines]);
        expect(status).toBe(200);
        expectOnlyHubIdentity(before);
      }),
      { numRuns: 100 },
    );
  });
});
