import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  encodeFrame,
  extraKeyHeaderName,
  FrameDecoder,
  FrameType,
  identityProblem,
  impersonationHeaders,
  MAX_OPEN_PAYLOAD,
  nameProblem,
  openPayloadBytes,
  utf8HeaderValue,
  type Identity,
} from '../src/index.js';

describe('identityProblem', () => {
  it('accepts names outside Latin-1, Latin-1 letters, commas, inner spaces and an empty uid', () => {
    for (const id of [
      { user: '开发者', groups: ['开发', 'développeurs', 'a,b', 'system:masters'] },
      { user: 'alice smith', groups: [], uid: '' },
      { user: 'émile', groups: ['😀'], uid: '42', extra: { 'scopes.example.com/x': ['读'] } },
    ] satisfies Identity[])
      expect(identityProblem(id)).toBeUndefined();
  });

  it.each([
    ['a control character in the user', { user: 'al\x01ice', groups: [] }, /user "al\\u0001ice" contains a control character/],
    ['a TAB in a group', { user: 'alice', groups: ['dev\tops'] }, /group "dev\\tops" contains a control character/],
    ['CR LF in a group', { user: 'alice', groups: ['dev\r\nImpersonate-User: admin'] }, /group .* contains a control character/],
    ['DEL in the uid', { user: 'alice', groups: [], uid: '4\x7f2' }, /uid .* contains a control character/],
    ['a C1 control', { user: 'ali\u0085ce', groups: [] }, /user "ali\\u0085ce" contains a control character/],
    ['a leading space', { user: ' admin', groups: [] }, /starts or ends with a space/],
    ['a trailing space in a group', { user: 'alice', groups: ['system:masters '] }, /starts or ends with a space/],
    ['an empty group', { user: 'alice', groups: [''] }, /group "" is empty/],
    ['an empty user', { user: '', groups: [] }, /user "" is empty/],
    ['a lone surrogate', { user: 'a\ud800b', groups: [] }, /not well-formed Unicode/],
    ['a control character in an extra value', { user: 'a', groups: [], extra: { k: ['v\n'] } }, /extra "k" value/],
    ['an empty extra key', { user: 'a', groups: [], extra: { '': ['v'] } }, /extra key "" is empty/],
  ] as Array<[string, Identity, RegExp]>)('refuses %s with 403 and a one-line reason', (_what, id, reason) => {
    const p = identityProblem(id)!;
    expect(p.status).toBe(403);
    expect(p.reason).toMatch(reason);
    expect(p.reason).not.toMatch(/[\r\n]/);
  });

  it('accepts 2,000 groups that fit an OPEN; refuses with 431 an identity whose OPEN the peer would refuse', () => {
    const many = { user: 'alice', groups: Array.from({ length: 2000 }, (_, i) => `group-${i}`) };
    expect(identityProblem(many)).toBeUndefined();
    const huge = { user: 'alice', groups: Array.from({ length: 2000 }, (_, i) => `group-${i}-${'x'.repeat(30)}`) };
    const p = identityProblem(huge)!;
    expect(p.status).toBe(431);
    expect(p.reason).toMatch(/identity too large for the tunnel: 2000 groups, \d+ bytes \(at most 65536\)/);
  });

  it('the size bound is exactly what the peer decoder accepts: one byte more is an OVERSIZE protocol error', () => {
    // Pad a single group so the OPEN payload is exactly MAX_OPEN_PAYLOAD, then one byte more.
    const base = { user: 'u', groups: [''] };
    const fixed = openPayloadBytes({ kind: 'http', target: 'apiserver', identity: base });
    for (const extra of [0, 1]) {
      const id = { user: 'u', groups: ['g'.repeat(MAX_OPEN_PAYLOAD - fixed + extra)] };
      const request = { kind: 'http' as const, target: 'apiserver', identity: id };
      expect(openPayloadBytes(request)).toBe(MAX_OPEN_PAYLOAD + extra);
      const bytes = encodeFrame({ type: FrameType.OPEN, streamId: 1, window: 65536, request });
      const decode = () => new FrameDecoder({ maxPayload: MAX_OPEN_PAYLOAD }).push(bytes);
      if (extra === 0) {
        expect(identityProblem(id)).toBeUndefined();
        expect(decode()).toHaveLength(1);
      } else {
        expect(identityProblem(id)?.status).toBe(431);
        expect(decode).toThrow(/exceeds limit/);
      }
    }
  });

  it('property: whatever the names, it never throws, and what it accepts Node can send as headers', () => {
    const name = fc.oneof(fc.string(), fc.string({ unit: 'binary' }), fc.string({ unit: fc.nat(0xffff).map((c) => String.fromCharCode(c)) }), fc.constantFrom('开发', ' x', 'x ', '\t'));
    fc.assert(
      fc.property(name, fc.array(name, { maxLength: 5 }), fc.option(name, { nil: undefined }), fc.dictionary(name, fc.array(name, { maxLength: 2 }), { maxKeys: 2 }), (user, groups, uid, extra) => {
        const id: Identity = { user, groups, ...(uid !== undefined ? { uid } : {}), extra };
        const p = identityProblem(id);
        if (p) return;
        const headers = impersonationHeaders(id);
        for (const [k, v] of Object.entries(headers)) {
          expect(() => http.validateHeaderName(k)).not.toThrow();
          for (const one of [v].flat()) expect(() => http.validateHeaderValue(k, String(one))).not.toThrow();
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('nameProblem', () => {
  it('is undefined for a plain name', () => expect(nameProblem('system:serviceaccount:ns:sa')).toBeUndefined());
});

describe('impersonation headers carry UTF-8 bytes', () => {
  it('utf8HeaderValue: the UTF-8 bytes as a Latin-1 string; ASCII unchanged', () => {
    expect(Buffer.from(utf8HeaderValue('开发'), 'latin1')).toEqual(Buffer.from([0xe5, 0xbc, 0x80, 0xe5, 0x8f, 0x91]));
    expect(Buffer.from(utf8HeaderValue('é'), 'latin1')).toEqual(Buffer.from([0xc3, 0xa9]));
    expect(utf8HeaderValue('system:masters')).toBe('system:masters');
  });

  it('extra keys: header-name characters kept, every other byte percent-encoded', () => {
    expect(extraKeyHeaderName('scopes')).toBe('scopes');
    expect(extraKeyHeaderName('example.com/scope (x)')).toBe('example.com%2Fscope%20%28x%29');
    expect(extraKeyHeaderName('100%')).toBe('100%25');
    expect(extraKeyHeaderName('读')).toBe('%E8%AF%BB');
  });

  it('a real HTTP server receives the exact UTF-8 bytes, one Impersonate-Group line per group', async () => {
    const server = http.createServer((req, res) => {
      const raw: string[] = [];
      for (let i = 0; i < req.rawHeaders.length; i += 2)
        if (req.rawHeaders[i]!.toLowerCase().startsWith('impersonate-'))
          raw.push(`${req.rawHeaders[i]!.toLowerCase()}=${Buffer.from(req.rawHeaders[i + 1]!, 'latin1').toString('utf8')}`);
      res.end(JSON.stringify(raw));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    try {
      const { port } = server.address() as AddressInfo;
      const headers = impersonationHeaders({ user: '开发者', groups: ['开发', 'a,b', 'é'], uid: '七', extra: { 'Ключ/x': ['значение'] } });
      const res = await new Promise<http.IncomingMessage>((resolve, reject) =>
        http.get({ host: '127.0.0.1', port, path: '/', headers, agent: false }, resolve).on('error', reject),
      );
      let body = '';
      for await (const c of res) body += String(c);
      expect(JSON.parse(body)).toEqual([
        'impersonate-user=开发者',
        'impersonate-group=开发',
        'impersonate-group=a,b',
        'impersonate-group=é',
        'impersonate-uid=七',
        'impersonate-extra-%d0%ba%d0%bb%d1%8e%d1%87%2fx=значение',
      ]);
    } finally {
      server.close();
      server.closeAllConnections();
    }
  });
});
