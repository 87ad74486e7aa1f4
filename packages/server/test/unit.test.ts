import { describe, expect, it } from 'vitest';
import { credentialsFromAuthorization, indexTokens, lookupToken, parseTokenFile } from '../src/auth.js';
import { RecentRate } from '../src/handshake-limit.js';
import type { AgentTunnel, ClusterEntry } from '../src/registry.js';
import { parseAuthority, resolveCluster, routeL7 } from '../src/routing/resolve.js';
import { pickTunnel } from '../src/routing/tunnels.js';
import { parsePolicy, policyAuthorizer } from '../src/policy.js';

describe('resolveCluster', () => {
  const known = (n: string) => ['member-1', 'member-2'].includes(n);
  it('takes X-Cluster-Name first', () => {
    expect(resolveCluster('member-1:443', 'member-2', known)).toMatchObject({ ok: true, cluster: 'member-2', host: 'member-1', port: 443 });
  });
  it('then a CONNECT host equal to a cluster name', () => {
    expect(resolveCluster('member-1:443', undefined, known)).toMatchObject({ ok: true, cluster: 'member-1' });
  });
  it('then <cluster>.<domain>', () => {
    expect(resolveCluster('member-2.clusters.example:6443', undefined, known, 'clusters.example')).toMatchObject({
      ok: true,
      cluster: 'member-2',
      port: 6443,
    });
    expect(resolveCluster('a.b.clusters.example:443', undefined, known, 'clusters.example')).toMatchObject({ cluster: 'a.b.clusters.example' });
  });
  it('takes the Basic user name of Proxy-Authorization when it names a known cluster (what kubectl sends for https://member-1:TOKEN@hub)', () => {
    expect(resolveCluster('kubernetes.default.svc:443', undefined, known, undefined, 'member-2')).toMatchObject({
      ok: true,
      cluster: 'member-2',
      host: 'kubernetes.default.svc',
      port: 443,
    });
    // Before the CONNECT host, after X-Cluster-Name.
    expect(resolveCluster('member-1:443', undefined, known, undefined, 'member-2')).toMatchObject({ cluster: 'member-2' });
    expect(resolveCluster('member-1:443', 'member-1', known, undefined, 'member-2')).toMatchObject({ cluster: 'member-1' });
  });
  it('a Basic user name that names no cluster yields to the host; with no host match it is the unknown cluster', () => {
    expect(resolveCluster('member-1:443', undefined, known, undefined, 'alice')).toMatchObject({ cluster: 'member-1' });
    expect(resolveCluster('member-1:443', undefined, known, undefined, 'alice@example.com')).toMatchObject({ cluster: 'member-1' });
    expect(resolveCluster('member-2.clusters.example:443', undefined, known, 'clusters.example', 'kubetunnel')).toMatchObject({ cluster: 'member-2' });
    expect(resolveCluster('kubernetes.default.svc:443', undefined, known, undefined, 'member-3')).toMatchObject({ ok: true, cluster: 'member-3' });
    expect(resolveCluster('kubernetes.default.svc:443', undefined, known, undefined, 'Not A Cluster')).toMatchObject({
      ok: true,
      cluster: 'kubernetes.default.svc',
    });
  });
  it('names an unknown host as itself (the caller answers 404)', () => {
    expect(resolveCluster('10.0.0.1:443', undefined, known)).toMatchObject({ ok: true, cluster: '10.0.0.1' });
  });
  it.each(['member 1', 'Member-1', 'x'.repeat(64), 'a\r\nb', '', '-a'])('rejects X-Cluster-Name %j with 400', (name) => {
    expect(resolveCluster('member-1:443', name, known)).toMatchObject({ ok: false, refusal: { reason: 'BAD_REQUEST' } });
  });
  it('rejects two X-Cluster-Name headers', () => {
    expect(resolveCluster('member-1:443', ['member-1', 'member-2'], known)).toMatchObject({ ok: false, refusal: { reason: 'BAD_REQUEST' } });
  });
  it.each(['member-1', ':443', 'a:0', 'a:65536', 'a/b:1', '[::1', ''])('rejects malformed authority %j', (a) => {
    expect(parseAuthority(a)).toBeUndefined();
    expect(resolveCluster(a, undefined, known)).toMatchObject({ ok: false, refusal: { reason: 'BAD_REQUEST' } });
  });
  it('accepts bracketed IPv6', () => {
    expect(parseAuthority('[::1]:443')).toEqual({ host: '[::1]', port: 443 });
  });
});

describe('static token file', () => {
  it('parses the kube-apiserver format', () => {
    const t = parseTokenFile('# comment\n\nt1,alice,1,"dev,ops"\nt2,bob,2\n t3 , carol , 3 , "a" \n');
    expect(t.get('t1')).toEqual({ user: 'alice', uid: '1', groups: ['dev', 'ops'] });
    expect(t.get('t2')).toEqual({ user: 'bob', uid: '2', groups: [] });
    expect(t.get('t3')).toEqual({ user: 'carol', uid: '3', groups: ['a'] });
  });
  it('names the bad line', () => {
    expect(() => parseTokenFile('t1,alice,1\nbroken\n')).toThrow(/line 2/);
    expect(() => parseTokenFile('t1,alice,1\nt1,bob,2\n')).toThrow(/line 2: duplicate/);
    expect(() => parseTokenFile('t1,alice,1,"open\n')).toThrow(/unterminated/);
  });
  it('looks tokens up exactly', () => {
    const t = indexTokens(parseTokenFile('secret,alice,1\n'));
    expect(lookupToken(t, 'secret')?.user).toBe('alice');
    expect(lookupToken(t, 'secre')).toBeUndefined();
    expect(lookupToken(t, 'secret ')).toBeUndefined();
  });
  it('finds the right identity among many tokens, and the index keeps no token', () => {
    const lines = Array.from({ length: 20_000 }, (_, i) => `token-${i},user-${i},${i}`);
    const t = indexTokens(parseTokenFile(lines.join('\n')));
    expect(lookupToken(t, 'token-19999')?.user).toBe('user-19999');
    expect(lookupToken(t, 'token-0')?.user).toBe('user-0');
    expect(lookupToken(t, 'token-20000')).toBeUndefined();
    expect([...t.keys()].some((k) => k.startsWith('token-'))).toBe(false);
  });
  it('reads Bearer and Basic (token as password) credentials', () => {
    const tokenFromAuthorization = (h: string | undefined) => credentialsFromAuthorization(h)?.token;
    expect(tokenFromAuthorization('Bearer abc')).toBe('abc');
    expect(tokenFromAuthorization('bearer abc')).toBe('abc');
    expect(tokenFromAuthorization('Basic ' + Buffer.from('user:abc').toString('base64'))).toBe('abc');
    expect(tokenFromAuthorization('Basic ' + Buffer.from('nocolon').toString('base64'))).toBeUndefined();
    expect(tokenFromAuthorization('Digest x')).toBeUndefined();
    expect(tokenFromAuthorization(undefined)).toBeUndefined();
    expect(tokenFromAuthorization('Basic ' + Buffer.from('member-1:').toString('base64'))).toBeUndefined();
  });
  it('gives the Basic user name too; an empty password is no token', () => {
    const basic = (s: string) => 'Basic ' + Buffer.from(s).toString('base64');
    expect(credentialsFromAuthorization(basic('member-1:tok'))).toEqual({ basicUser: 'member-1', token: 'tok' });
    expect(credentialsFromAuthorization(basic('member-1:a:b'))).toEqual({ basicUser: 'member-1', token: 'a:b' });
    expect(credentialsFromAuthorization(basic('member-1:'))).toEqual({ basicUser: 'member-1' });
    expect(credentialsFromAuthorization(basic(':tok'))).toEqual({ token: 'tok' });
    expect(credentialsFromAuthorization('Bearer tok')).toEqual({ token: 'tok' });
    expect(credentialsFromAuthorization(basic('nocolon'))).toBeUndefined();
  });
});

describe('pickTunnel', () => {
  const tunnel = (id: string, open: number, opts: Partial<{ usable: boolean; l7: boolean; allow: string[] }> = {}) =>
    ({
      agentId: id,
      l7: opts.l7 ?? true,
      allowDest: new Set(opts.allow ?? []),
      session: { usable: opts.usable ?? true, openStreams: open, pendingOpens: 0 },
    }) as unknown as AgentTunnel;
  const cluster = (...ts: AgentTunnel[]): ClusterEntry => ({
    name: 'c',
    agents: new Map(ts.map((t) => [t.agentId, t])),
    pendingDials: 0,
    openStreams: 0,
  });
  it('picks the least busy live agent', () => {
    expect(pickTunnel(cluster(tunnel('a', 5), tunnel('b', 2), tunnel('c', 3)))?.agentId).toBe('b');
  });
  it('skips agents that are draining or gone', () => {
    expect(pickTunnel(cluster(tunnel('a', 0, { usable: false }), tunnel('b', 9)))?.agentId).toBe('b');
    expect(pickTunnel(cluster(tunnel('a', 0, { usable: false })))).toBeUndefined();
  });
  it('needs an agent that allows the target', () => {
    const c = cluster(tunnel('a', 0), tunnel('b', 5, { allow: ['db:5432'] }));
    expect(pickTunnel(c, 'tcp', 'db:5432')?.agentId).toBe('b');
    expect(pickTunnel(c, 'tcp', 'other:1')).toBeUndefined();
    expect(pickTunnel(cluster(tunnel('a', 0, { l7: false })), 'http')).toBeUndefined();
  });
});

describe('routeL7', () => {
  it('takes the cluster from the path and keeps the rest, query included', () => {
    expect(routeL7('/clusters/member-1/api/v1/pods?watch=1&x=%2F', undefined)).toEqual({ ok: true, cluster: 'member-1', path: '/api/v1/pods?watch=1&x=%2F' });
    expect(routeL7('/clusters/member-1', undefined)).toEqual({ ok: true, cluster: 'member-1', path: '/' });
    expect(routeL7('/clusters/member-1?x=1', undefined)).toEqual({ ok: true, cluster: 'member-1', path: '/?x=1' });
  });
  it('then X-Cluster-Name, then the TLS server name', () => {
    expect(routeL7('/version', 'member-2')).toEqual({ ok: true, cluster: 'member-2', path: '/version' });
    expect(routeL7('/version', undefined, 'member-3.clusters.kubetunnel', 'clusters.kubetunnel')).toEqual({ ok: true, cluster: 'member-3', path: '/version' });
    expect(routeL7('/version', undefined, 'localhost', 'clusters.kubetunnel')).toBeUndefined();
    expect(routeL7('/version', undefined)).toBeUndefined();
  });
  it('refuses invalid names', () => {
    expect(routeL7('/clusters/Bad_Name/x', undefined)).toHaveProperty('refusal.reason', 'BAD_REQUEST');
    expect(routeL7('/clusters/%E0%A4%A/x', undefined)).toHaveProperty('refusal.reason', 'BAD_REQUEST');
    expect(routeL7('/x', 'a b')).toHaveProperty('refusal.reason', 'BAD_REQUEST');
  });
});

describe('policy', () => {
  const authorize = policyAuthorizer(
    parsePolicy('rules:\n  - users: [alice]\n    clusters: ["prod-*"]\n  - groups: [dev]\n    clusters: [staging]\n  - users: ["*"]\n    clusters: [sandbox]\n'),
  );
  it('allows the union of the rules that apply, by user, group or *', () => {
    expect(authorize({ user: 'alice', groups: [] }, 'prod-eu')).toBe(true);
    expect(authorize({ user: 'bob', groups: ['dev'] }, 'staging')).toBe(true);
    expect(authorize({ user: 'bob', groups: [] }, 'sandbox')).toBe(true);
    expect(authorize({ user: 'bob', groups: ['dev'] }, 'prod-eu')).toEqual({ reason: 'FORBIDDEN', message: 'user "bob" may not reach cluster "prod-eu"' });
    expect(authorize({ user: 'alice', groups: [] }, 'prod')).not.toBe(true);
  });
  it('globs match whole names only; regex characters are literal', () => {
    const a = policyAuthorizer(parsePolicy('rules:\n  - users: [u]\n    clusters: ["a.b", "x*"]\n'));
    expect(a({ user: 'u', groups: [] }, 'a.b')).toBe(true);
    expect(a({ user: 'u', groups: [] }, 'axb')).not.toBe(true);
    expect(a({ user: 'u', groups: [] }, 'yx1')).not.toBe(true);
  });
  it.each([
    ['not a mapping', '- a'],
    ['no rules list', 'rules: 3'],
    ['unknown key', 'rules:\n  - users: [a]\n    clusters: [b]\n    verbs: [get]'],
    ['nobody', 'rules:\n  - clusters: [b]'],
    ['no clusters', 'rules:\n  - users: [a]'],
    ['non-string', 'rules:\n  - users: [1]\n    clusters: [b]'],
  ])('rejects a policy with %s', (_what, text) => {
    expect(() => parsePolicy(text)).toThrow(/policy/);
  });
});

describe('RecentRate (the registration rate behind Retry-After)', () => {
  it('a storm\'s rate is known from its first tenth of a second, not a whole second later', () => {
    const r = new RecentRate();
    expect(r.perSecond(0)).toBe(0);
    // 40 registrations in the first 100 ms of a storm: 400 a second.
    for (let t = 1000; t < 1100; t += 2.5) r.add(t);
    expect(r.perSecond(1100)).toBeCloseTo(400, 0);
    // A steady 200 a second, counted over the last second.
    const s = new RecentRate();
    for (let t = 0; t < 3000; t += 5) s.add(t);
    expect(s.perSecond(3000)).toBeCloseTo(200, 0);
  });

  it('one event reads as at most 10 a second; events a second old are forgotten', () => {
    const r = new RecentRate();
    r.add(500);
    expect(r.perSecond(500)).toBe(10);
    expect(r.perSecond(1499)).toBeCloseTo(1000 / 999, 3);
    expect(r.perSecond(1500)).toBe(0);
  });

  it('keeps a bounded number of times', () => {
    const r = new RecentRate();
    for (let i = 0; i < 50_000; i++) r.add(1000 + i / 1000);
    // 10,000 kept, the newest, over their span (10 ms, counted as 100).
    expect(r.perSecond(1050)).toBe(100_000);
    expect((r as unknown as { times: number[] }).times.length).toBeLessThanOrEqual(20_000);
  });
});
