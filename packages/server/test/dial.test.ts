/**
 * Retrying what never started, on both sides of the tunnel: an agent that is
 * draining refuses an OPEN without dialing; the server opens a stream the
 * tunnel refused before it started on another tunnel of the cluster, and
 * never retries a refusal that came from the target.
 */
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryTransport, Session, silentLogger, type IncomingOpen, type Reason } from '@kubetunnel/shared';
import { dialCluster, type DialDeps } from '../src/dial.js';
import { ServerMetrics } from '../src/metrics.js';
import { httpAnswer } from '../src/refusal.js';
import { ClusterRegistry, type AgentTunnel } from '../src/registry.js';
import { UserStreamLimit } from '../src/stream-limit.js';

interface Pair {
  server: Session;
  agent: Session;
}

const pairs: Pair[] = [];
afterEach(() => {
  for (const p of pairs.splice(0)) {
    p.server.close();
    p.agent.close();
  }
});

/** A server and an agent session over memory, no pings. */
function memoryPair(): Pair {
  const [a, b] = MemoryTransport.pair();
  const pair = { server: new Session(a, { role: 'server', pingIntervalMs: 0 }), agent: new Session(b, { role: 'agent', pingIntervalMs: 0 }) };
  pairs.push(pair);
  return pair;
}

/** A tunnel of cluster "c" whose agent answers every OPEN with `answer`. */
function tunnel(registry: ClusterRegistry, agentId: string, answer: (incoming: IncomingOpen, pair: Pair) => void): { pair: Pair; opens: () => number } {
  const pair = memoryPair();
  let opens = 0;
  pair.agent.on('open', (incoming: IncomingOpen) => {
    opens++;
    answer(incoming, pair);
  });
  const t: AgentTunnel = {
    cluster: 'c',
    agentId,
    sessionId: agentId,
    session: pair.server,
    allowDest: new Set(),
    l7: false,
    connectedAt: new Date(),
    log: silentLogger(),
  };
  registry.register(t);
  return { pair, opens: () => opens };
}

const accept = (incoming: IncomingOpen) => incoming.accept().end();
const refuse = (reason: Reason) => (incoming: IncomingOpen) => incoming.reject(reason);

function deps(registry: ClusterRegistry): DialDeps & { metrics: ServerMetrics } {
  return {
    registry,
    metrics: new ServerMetrics(registry),
    dialTimeoutMs: 5000,
    dialAttempts: 3,
    authorize: () => true,
    clientStreams: new UserStreamLimit(100),
  };
}

const dial = (d: DialDeps) => dialCluster(d, { cluster: 'c', identity: { user: 'u', groups: [] }, request: { kind: 'tcp', target: 'apiserver' }, frontend: 'connect' });

async function retries(d: { metrics: ServerMetrics }): Promise<number> {
  const m = await d.metrics.registry.getSingleMetric('kubetunnel_dial_retries_total')!.get();
  return m.values.reduce((n, v) => n + v.value, 0);
}

describe('a stream refused before it started is opened on another tunnel', () => {
  it.each<[string, (incoming: IncomingOpen, pair: Pair) => void]>([
    ['the agent is draining (OPEN_ERR GOING_AWAY)', refuse('GOING_AWAY')],
    ['the agent is full (OPEN_ERR TOO_MANY_STREAMS)', refuse('TOO_MANY_STREAMS')],
    ['the tunnel closes while the OPEN waits', (_incoming, pair) => pair.agent.close()],
  ])('%s: the next tunnel serves it, once', async (_name, first) => {
    const registry = new ClusterRegistry();
    const a = tunnel(registry, 'a', first);
    const b = tunnel(registry, 'b', accept);
    const d = deps(registry);
    const result = await dial(d);
    expect(result.ok).toBe(true);
    if (result.ok) {
      expect(result.tunnel.agentId).toBe('b');
      result.stream.destroy();
      await once(result.stream, 'close');
    }
    expect([a.opens(), b.opens()]).toEqual([1, 1]);
    expect(await retries(d)).toBe(1);
    expect(registry.get('c')!.pendingDials).toBe(0);
    expect(d.clientStreams.size).toBe(0);
  });

  it.each<Reason>(['DIAL_REFUSED', 'TARGET_NOT_ALLOWED', 'DIAL_TIMEOUT'])('%s came from the target side: final, no other tunnel is tried', async (reason) => {
    const registry = new ClusterRegistry();
    const a = tunnel(registry, 'a', refuse(reason));
    const b = tunnel(registry, 'b', accept);
    const d = deps(registry);
    const result = await dial(d);
    expect(result).toMatchObject({ ok: false, refusal: { reason } });
    expect([a.opens(), b.opens()]).toEqual([1, 0]);
    expect(await retries(d)).toBe(0);
  });

  it('every tunnel refuses: the last refusal is answered, after at most dialAttempts tries', async () => {
    const registry = new ClusterRegistry();
    const all = ['a', 'b', 'c', 'd'].map((id) => tunnel(registry, id, refuse('GOING_AWAY')));
    const d = deps(registry);
    const result = await dial(d);
    expect(result).toMatchObject({ ok: false, refusal: { reason: 'GOING_AWAY' } });
    if (!result.ok) expect(httpAnswer(result.refusal, 'proxy')).toEqual({ status: 503, headers: { 'Retry-After': '1' } });
    expect(all.map((t) => t.opens())).toEqual([1, 1, 1, 0]);
    expect(registry.get('c')!.pendingDials).toBe(0);
    expect(d.clientStreams.size).toBe(0);
  });
});

describe('the agent side: a draining session dials nothing', () => {
  it('an OPEN that arrives after the agent sent GOAWAY is refused GOING_AWAY without reaching the handler', async () => {
    const pair = memoryPair();
    let handled = 0;
    pair.agent.on('open', (incoming: IncomingOpen) => {
      handled++;
      incoming.accept();
    });
    // The OPEN and the GOAWAY cross: the agent drains before the OPEN reaches it.
    const opened = pair.server.open({ kind: 'tcp', target: 'apiserver' });
    pair.agent.goAway();
    await expect(opened).rejects.toMatchObject({ reason: 'GOING_AWAY' });
    expect(handled).toBe(0);
  });
});

describe('a server that has just started', () => {
  it('answers an unknown cluster 503 with Retry-After during the registration grace, 404 after it', async () => {
    const young = new ClusterRegistry(60_000);
    const early = await dial(deps(young));
    expect(early).toMatchObject({ ok: false, refusal: { reason: 'NO_AGENT', retryAfter: 1 } });
    if (!early.ok) expect(httpAnswer(early.refusal, 'proxy')).toEqual({ status: 503, headers: { 'Retry-After': '1' } });
    const later = await dial(deps(new ClusterRegistry(0)));
    expect(later).toMatchObject({ ok: false, refusal: { reason: 'UNKNOWN_CLUSTER' } });
    if (!later.ok) expect(httpAnswer(later.refusal, 'proxy').status).toBe(404);
  });
});
