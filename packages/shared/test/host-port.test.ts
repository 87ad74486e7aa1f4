import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isValidHostPort, parseHostPort, unbracketHost } from '../src/index.js';

describe('host:port, one grammar', () => {
  it.each<[string, { host: string; port: number }]>([
    ['db:5432', { host: 'db', port: 5432 }],
    ['DB.Example.com:1', { host: 'DB.Example.com', port: 1 }],
    ['my_db:65535', { host: 'my_db', port: 65535 }],
    ['10.0.0.1:22', { host: '10.0.0.1', port: 22 }],
    ['[::1]:443', { host: '[::1]', port: 443 }],
    ['[2001:db8::1]:6443', { host: '[2001:db8::1]', port: 6443 }],
    ['[::ffff:10.0.0.1]:80', { host: '[::ffff:10.0.0.1]', port: 80 }],
    [`${'a'.repeat(253)}:1`, { host: 'a'.repeat(253), port: 1 }],
  ])('accepts %j', (s, want) => {
    expect(parseHostPort(s)).toEqual(want);
    expect(isValidHostPort(s)).toBe(true);
  });

  it.each([
    'db', // no port
    ':443', // no host
    'db:', // empty port
    'db:0',
    'db:65536',
    'db:123456',
    'db:+1',
    'db:0x10',
    '::1:443', // IPv6 without brackets
    '[::1', // unterminated bracket
    '[::1]', // no port
    '[host]:1', // a name in brackets
    'a/b:1',
    'user@db:1', // userinfo
    'db :1',
    ' db:1',
    'db:1 ',
    'db:1\r\n',
    'db:1:2',
    `${'a'.repeat(254)}:1`, // longer than a DNS name
    '',
  ])('refuses %j', (s) => {
    expect(parseHostPort(s)).toBeUndefined();
    expect(isValidHostPort(s)).toBe(false);
  });

  it('a parsed host:port written back reads the same; parsing never throws', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 40 }), (s) => {
        const hp = parseHostPort(s);
        if (hp) expect(parseHostPort(`${hp.host}:${hp.port}`)).toEqual(hp);
      }),
      { numRuns: 2000 },
    );
  });

  it('a socket connects to an IPv6 literal without its brackets', () => {
    expect(unbracketHost('[::1]')).toBe('::1');
    expect(unbracketHost('db')).toBe('db');
    expect(unbracketHost('10.0.0.1')).toBe('10.0.0.1');
  });
});
