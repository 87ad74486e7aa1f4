/**
 * Property: whatever headers an L7 caller sends, the member apiserver sees
 * exactly the impersonation headers the hub computed for the caller, the
 * agent's own credential, and none of the caller's credentials or identity
 * claims. Server, agent and stand-in apiserver run in this process; requests
 * are written byte for byte so that letter case, duplicates and whitespace
 * are the caller's choice.
 */
import { once } from 'node:events';
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

beforeAll(async () => {
  member = await startL7Member(new Map([['hub-token', { user: 'alice', uid: '42', groups: ['dev', 'ops'] }]]), {
    'caller-token': { user: 'mallory', groups: ['system:masters'] },
  });
  ({ hubCA, server, api } = member);
});

afterAll(async () => {
  await member.close();
});

/** Writes one request as raw bytes over TLS; resolves with the status code. */
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

describe('L7 header property', () => {


  it('the member sees exactly the hub-computed impersonation and no caller credential', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(headerLine, { maxLength: 8 }), fc.option(connectionLine), async (lines, conn) => {
        const before = api.requests.length;
        // The hub credential comes first; everything after it is the caller's mischief.
        const status = await send(['Authorization: Bearer hub-token', ...lines, ...(conn ? [conn] : [])]);
        expect(status).toBe(200);
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
        expect(raw.filter(([k]) => k === 'proxy-authorization')).toEqual([]);
        expect(values('authorization')).toHaveLength(1);
      }),
      { numRuns: 150 },
    );
  });
});
