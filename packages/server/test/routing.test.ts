import { describe, expect, it } from 'vitest';
import { APISERVER_TARGET, isValidHostPort, silentLogger } from '@kubetunnel/shared';
import { ClusterRegistry, type AgentTunnel, type TunnelSession } from '../src/registry.js';
import { CONNECT_WORDS, parseAuthority, resolveCluster, resolveDial } from '../src/routing/resolve.js';
import { canServe, l7Request, tcpTarget } from '../src/routing/target.js';
import { leastBusy } from '../src/routing/tunnels.js';
import { UserStreamLimit } from '../src/stream-limit.js';

const tunnel = (cluster: string, agentId: string, allow: string[] = [], l7 = false): AgentTunnel => ({
  cluster,
  agentId,
  sessionId: agentId,
  session: { usable: true, openStreams: 0, pendingOpens: 0 } as unknown as TunnelSession,
  allowDest: new Set(allow),
  l7,
  connectedAt: new Date(),
  log: silentLogger(),
});

describe('host:port: a CONNECT target, a dial address and an allow-list entry follow one grammar', () => {
  it.each(['db:5432', 'my_db:5432', 'DB:1', '[::1]:443', '10.0.0.1:22', 'db', 'db:0', 'a/b:1', '::1:443', `${'a'.repeat(254)}:1`])(
    '%j: the resolver and the allow-list check agree',
    (s) => {
      expect(parseAuthority(s) !== undefined).toBe(isValidHostPort(s));
    },
  );
});

describe('each frontend words the refusal with its own names', () => {
  const registry = new ClusterRegistry();
  it('a Konnectivity dial names the dial address and x-cluster-name metadata', () => {
    expect(resolveDial('member-1', undefined, registry)).toMatchObject({ ok: false, refusal: { reason: 'BAD_REQUEST', message: 'malformed dial address "member-1"' } });
    expect(resolveDial('member-1:443', 'Bad Name', registry)).toMatchObject({
      ok: false,
      refusal: { reason: 'BAD_REQUEST', message: 'invalid x-cluster-name: want a DNS label (a-z, 0-9, -; at most 63)' },
    });
    expect(resolveDial('member-1:443', ['a', 'b'], registry)).toMatchObject({ refusal: { message: 'more than one x-cluster-name header' } });
  });
  it('a CONNECT names the CONNECT target and X-Cluster-Name', () => {
    const known = () => false;
    expect(resolveCluster('member-1', undefined, known, undefined, undefined, CONNECT_WORDS)).toMatchObject({
      refusal: { reason: 'BAD_REQUEST', message: 'malformed CONNECT target "member-1"' },
    });
    expect(resolveCluster('member-1:443', 'Bad Name', known)).toMatchObject({ refusal: { message: 'invalid X-Cluster-Name: want a DNS label (a-z, 0-9, -; at most 63)' } });
  });
});

describe('the target rule', () => {
  it('a tcp stream is for an exactly allow-listed host:port, else for the apiserver', () => {
    const registry = new ClusterRegistry();
    registry.register(tunnel('c', 'a', ['db:5432']));
    expect(tcpTarget(registry, { cluster: 'c', host: 'db', port: 5432 })).toBe('db:5432');
    expect(tcpTarget(registry, { cluster: 'c', host: 'db', port: 5433 })).toBe(APISERVER_TARGET);
    expect(tcpTarget(registry, { cluster: 'c', host: 'kubernetes.default.svc', port: 443 })).toBe(APISERVER_TARGET);
    expect(tcpTarget(registry, { cluster: 'other', host: 'db', port: 5432 })).toBe(APISERVER_TARGET);
  });
  it('an agent serves its apiserver and its allow list over tcp, and http only when it serves L7', () => {
    const t = tunnel('c', 'a', ['db:5432']);
    expect([canServe(t, 'tcp', APISERVER_TARGET), canServe(t, 'tcp', 'db:5432'), canServe(t, 'tcp', 'db:1'), canServe(t, 'http', APISERVER_TARGET)]).toEqual([
      true,
      true,
      false,
      false,
    ]);
    expect(canServe(tunnel('c', 'b', [], true), 'http', APISERVER_TARGET)).toBe(true);
    const id = { user: 'u', groups: ['g'] };
    expect(l7Request(id)).toEqual({ kind: 'http', target: APISERVER_TARGET, identity: id });
  });
  it('the least busy chooser passes over the tunnels a dial tried already', () => {
    const registry = new ClusterRegistry();
    const a = tunnel('c', 'a');
    const b = tunnel('c', 'b');
    registry.register(a);
    registry.register(b);
    const c = registry.get('c')!;
    expect(leastBusy.choose(c, { kind: 'tcp', target: APISERVER_TARGET })).toBe(a);
    expect(leastBusy.choose(c, { kind: 'tcp', target: APISERVER_TARGET }, new Set([a]))).toBe(b);
    expect(leastBusy.choose(c, { kind: 'tcp', target: APISERVER_TARGET }, new Set([a, b]))).toBeUndefined();
  });
});

describe('counters only their owner writes', () => {
  it('the registry counts a dial and a stream until they are released, once however often released', () => {
    const registry = new ClusterRegistry();
    registry.register(tunnel('c', 'a'));
    const c = registry.get('c')!;
    const dialDone = registry.trackDial(c);
    const streamDone = registry.trackStream(c);
    expect(registry.totals()).toMatchObject({ pendingDials: 1, openStreams: 1 });
    dialDone();
    dialDone();
    streamDone();
    streamDone();
    expect(registry.totals()).toMatchObject({ pendingDials: 0, openStreams: 0 });
    expect(() => registry.trackDial({ name: 'c', agents: new Map(), pendingDials: 0, openStreams: 0 })).toThrow(/not one of this registry's/);
  });
  it('a user holds at most `max` streams; a slot given back twice counts once', () => {
    const limit = new UserStreamLimit(2);
    const one = limit.acquire('u')!;
    const two = limit.acquire('u')!;
    expect(limit.acquire('u')).toBeUndefined();
    expect(limit.acquire('v')).toBeDefined();
    expect(limit.heldBy('u')).toBe(2);
    one();
    one();
    expect(limit.heldBy('u')).toBe(1);
    two();
    expect(limit.heldBy('u')).toBe(0);
    expect(limit.size).toBe(1); // v still holds one
  });
});
