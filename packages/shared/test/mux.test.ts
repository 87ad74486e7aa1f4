import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { Readable, Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Defaults } from '../src/constants.js';
import { TunnelError } from '../src/errors.js';
import { HEADER_SIZE } from '../src/protocol/frame.js';
import { BufferPool, poolFor } from '../src/mux/pool.js';
import { MemoryTransport, Session, type IncomingOpen, type MuxStream } from '../src/mux/index.js';
import { closed, expectNoLeaks, expectPairIdle, liveResources, memoryPair, openAccepted, readAll, wsPair, type Pair } from './helpers.js';

const tcp = { kind: 'tcp' as const, target: 'apiserver' };

/** Accepts every OPEN and echoes the stream's bytes back. */
function echo(session: Session): void {
  session.on('open', (inc: IncomingOpen) => {
    const s = inc.accept();
    s.pipe(s);
  });
}

/** Counts bytes without keeping them. */
function sink(): Writable & { bytes: number } {
  const w = new Writable({
    write(chunk: Buffer, _e, cb) {
      w.bytes += chunk.length;
      cb();
    },
  }) as Writable & { bytes: number };
  w.bytes = 0;
  return w;
}

/** A source of `total` bytes in chunks, honouring back pressure. */
function source(total: number, chunk = 64 * 1024): Readable {
  const block = randomBytes(chunk);
  let left = total;
  return new Readable({
    read() {
      if (left <= 0) return void this.push(null);
      const n = Math.min(chunk, left);
      left -= n;
      this.push(n === chunk ? block : block.subarray(0, n));
    },
  });
}

let pair: Pair | undefined;
let before: Record<string, number>;

beforeEach(() => {
  before = liveResources();
});

afterEach(async () => {
  if (pair) {
    // Every test leaves its sessions with nothing open or pending.
    expectPairIdle(pair);
    await pair.close();
    pair = undefined;
  }
  await expectNoLeaks(before);
});

/** Waits until both sessions have released every stream. */
async function settled(p: Pair): Promise<void> {
  for (const s of [p.server, p.agent]) {
    while (s.openStreams > 0 || s.pendingOpens > 0 || s.pendingIncoming > 0) await once(s, 'streamClosed');
  }
}

describe.each([
  ['memory', () => Promise.resolve(memoryPair({ pingIntervalMs: 0 }))],
  ['ws', () => wsPair({ pingIntervalMs: 0 })],
])('mux over %s', (_name, makePairDefault) => {
  const makePair = (opts?: Parameters<typeof memoryPair>[0]) => (opts ? (_name === 'ws' ? wsPair(opts) : Promise.resolve(memoryPair(opts))) : makePairDefault());
  it('carries 1,000 concurrent streams of random sizes byte-exact', async () => {
    pair = await makePair();
    echo(pair.agent);
    const server = pair.server;
    const results = await Promise.all(
      Array.from({ length: 1000 }, async (_, i) => {
        const size = i % 10 === 0 ? 0 : Math.floor(Math.random() * 96 * 1024);
        const payload = randomBytes(size);
        const s = await server.open(tcp);
        const back = readAll(s);
        // Write in a few uneven pieces, then half-close.
        let off = 0;
        while (off < size) {
          const n = Math.min(size - off, 1 + Math.floor(Math.random() * 40000));
          if (!s.write(payload.subarray(off, off + n))) await once(s, 'drain');
          off += n;
        }
        s.end();
        const got = await back;
        return got.equals(payload);
      }),
    );
    expect(results.filter((ok) => !ok)).toHaveLength(0);
    await settled(pair);
  });

  it('a reader that never reads holds at most its window while 50 other streams complete', async () => {
    pair = await makePair({ pingIntervalMs: 0, initialWindow: 128 * 1024 });
    const window = pair.server.initialWindow;
    let stuckAgentSide: MuxStream | undefined;
    pair.agent.on('open', (inc: IncomingOpen) => {
      const s = inc.accept();
      if (inc.request.target === 'stuck') {
        stuckAgentSide = s;
        // Pushes 20 MB toward a server-side reader that never reads.
        source(20 << 20).pipe(s);
      } else s.pipe(s);
    });
    const stuck = await pair.server.open({ kind: 'tcp', target: 'stuck' });
    const others = await Promise.all(
      Array.from({ length: 50 }, async () => {
        const s = await pair!.server.open(tcp);
        const data = randomBytes(200 * 1024);
        const back = readAll(s);
        s.end(data);
        return (await back).equals(data);
      }),
    );
    expect(others.every(Boolean)).toBe(true);
    // The stuck stream received no more than its window, and the agent was
    // held back by flow control rather than buffering the 20 MB.
    expect(stuck.bytesIn).toBeLessThanOrEqual(window);
    expect(stuck.readableLength).toBeLessThanOrEqual(window);
    expect(stuckAgentSide!.bytesOut).toBeLessThanOrEqual(window);
    expect(stuckAgentSide!.writableLength).toBeLessThanOrEqual(stuckAgentSide!.writableHighWaterMark + 64 * 1024);
    stuck.destroy();
    await closed(stuckAgentSide!);
    await settled(pair);
  });

  it('half-closes each direction independently', async () => {
    pair = await makePair();
    const [s, agentSide] = await openAccepted(pair);
    const agentRead = readAll(agentSide);
    s.end('from server');
    expect((await agentRead).toString()).toBe('from server');
    // The agent can still write after the server's FIN.
    const serverRead = readAll(s);
    agentSide.write('still ');
    agentSide.end('talking');
    expect((await serverRead).toString()).toBe('still talking');
    await settled(pair);
  });

  it('zero-length writes in both directions frame nothing and keep the tunnel up', async () => {
    pair = await makePair();
    const [s, agentSide] = await openAccepted(pair);
    const agentRead = readAll(agentSide);
    const serverRead = readAll(s);
    // Empty writes alone (write), and corked together with real ones (writev).
    s.write(Buffer.alloc(0));
    agentSide.write(Buffer.alloc(0));
    s.cork();
    s.write(Buffer.alloc(0));
    s.write('a');
    s.write(Buffer.alloc(0));
    s.uncork();
    agentSide.write('b');
    agentSide.write(Buffer.alloc(0));
    s.end(Buffer.alloc(0));
    agentSide.end(Buffer.alloc(0));
    expect((await agentRead).toString()).toBe('a');
    expect((await serverRead).toString()).toBe('b');
    expect(pair.server.closed || pair.agent.closed).toBe(false);
    await settled(pair);
  });

  it('RESET from either side errors the other with the reason code', async () => {
    pair = await makePair();
    const agentStreams: MuxStream[] = [];
    pair.agent.on('open', (inc: IncomingOpen) => agentStreams.push(inc.accept()));
    const a = await pair.server.open(tcp);
    const b = await pair.server.open(tcp);
    const aErr = closed(agentStreams[0]!);
    a.destroy(new TunnelError('DIAL_REFUSED'));
    expect((await aErr) as TunnelError).toMatchObject({ reason: 'DIAL_REFUSED' });
    const bErr = closed(b);
    agentStreams[1]!.destroy(new TunnelError('UPSTREAM_RESET', 'apiserver hung up'));
    expect((await bErr) as TunnelError).toMatchObject({ reason: 'UPSTREAM_RESET', message: 'apiserver hung up' });
    await settled(pair);
  });

  it('OPEN_ERR rejects the open with the code the agent chose', async () => {
    pair = await makePair();
    pair.agent.on('open', (inc: IncomingOpen) => inc.reject('TARGET_NOT_ALLOWED', 'not on the allow list'));
    await expect(pair.server.open({ kind: 'tcp', target: '10.0.0.1:22' })).rejects.toMatchObject({
      reason: 'TARGET_NOT_ALLOWED',
      message: 'not on the allow list',
    });
    await settled(pair);
  });

  it('an unanswered OPEN times out, and the peer sees it cancelled', async () => {
    pair = await makePair({ pingIntervalMs: 0, openTimeoutMs: 200 });
    const seen = new Promise<IncomingOpen>((resolve) => pair!.agent.on('open', resolve));
    const opening = pair.server.open(tcp);
    expect(pair.server.pendingOpens).toBe(1);
    const inc = await seen;
    await expect(opening).rejects.toMatchObject({ reason: 'OPEN_TIMEOUT' });
    if (!inc.signal.aborted) await once(inc.signal, 'abort');
    expect((inc.signal.reason as TunnelError).reason).toBe('OPEN_TIMEOUT');
    expect(() => inc.accept()).toThrow(/went away/);
    await settled(pair);
  });

  it('GOAWAY refuses new streams and lets open ones finish', async () => {
    pair = await makePair();
    echo(pair.agent);
    const s = await pair.server.open(tcp);
    const goaway = once(pair.server, 'goaway');
    pair.agent.goAway();
    await goaway;
    expect(pair.server.usable).toBe(false);
    await expect(pair.server.open(tcp)).rejects.toMatchObject({ reason: 'GOING_AWAY' });
    const back = readAll(s);
    s.end('last words');
    expect((await back).toString()).toBe('last words');
    await settled(pair);
  });

  it('drain closes the session once its streams end', async () => {
    pair = await makePair();
    echo(pair.agent);
    const s = await pair.server.open(tcp);
    const drained = pair.agent.drain(30_000);
    const back = readAll(s);
    s.end('bye');
    expect((await back).toString()).toBe('bye');
    await drained;
    expect(pair.agent.closed).toBe(true);
  });

  it('a session that closes fails every stream and pending open', async () => {
    pair = await makePair();
    const agentStreams: MuxStream[] = [];
    let first = true;
    pair.agent.on('open', (inc: IncomingOpen) => {
      if (first) agentStreams.push(inc.accept());
      first = false; // leave the second OPEN unanswered
    });
    const s = await pair.server.open(tcp);
    const pending = pair.server.open(tcp);
    const sClosed = closed(s);
    pair.agent.close();
    await expect(pending).rejects.toMatchObject({ reason: 'SESSION_CLOSED' });
    await sClosed;
    expect((s.errored as TunnelError).reason).toBe('SESSION_CLOSED');
    expect(pair.server.openStreams).toBe(0);
  });
});

describe('mux over ws: fairness, liveness, back pressure', () => {
  it("a small write on B is not queued behind A's 200 MB", async () => {
    pair = await wsPair({ pingIntervalMs: 0 });
    // A's window may have grown (autotuning) up to the session's maximum.
    const window = pair.server.maxWindow;
    const agentStreams = new Map<string, MuxStream>();
    pair.agent.on('open', (inc: IncomingOpen) => {
      const s = inc.accept();
      s.resume();
      agentStreams.set(inc.request.target, s);
    });
    const a = await pair.server.open({ kind: 'tcp', target: 'a' });
    const b = await pair.server.open({ kind: 'tcp', target: 'b' });
    const aSink = sink();
    const bulk = pipeline(a, aSink);
    const total = 200 << 20;
    const pushing = pipeline(source(total), agentStreams.get('a')!);
    // While A saturates the tunnel, B sends small messages; for each, count
    // how many of A's bytes arrived between B's write and B's delivery.
    const agentB = agentStreams.get('b')!;
    const behind: number[] = [];
    while (aSink.bytes < total - (16 << 20) && behind.length < 200) {
      const startA = aSink.bytes;
      const got = once(b, 'data');
      agentB.write('ping');
      await got;
      behind.push(aSink.bytes - startA);
    }
    agentB.end();
    a.end();
    b.end();
    b.resume();
    await Promise.all([bulk, pushing]);
    expect(aSink.bytes).toBe(total);
    expect(behind.length).toBeGreaterThan(5);
    // B waits behind at most what A already had in flight (its window, at
    // most the maximum) plus one message of A's frames: never behind A's backlog.
    const bound = window + 256 * 1024 + 64 * 1024;
    expect(Math.max(...behind)).toBeLessThanOrEqual(bound);
    await settled(pair);
  });

  it('detects a dead peer within the ping timeout and errors every stream', async () => {
    pair = await wsPair({ pingIntervalMs: 100, pingTimeoutMs: 300 }, { pingIntervalMs: 0 });
    echo(pair.agent);
    const streams = await Promise.all(Array.from({ length: 20 }, () => pair!.server.open(tcp)));
    const errors = streams.map((s) => closed(s));
    // The agent process freezes: its socket stops reading, nothing is answered.
    const started = performance.now();
    (pair.agentWs as unknown as { _socket: { pause(): void } })._socket.pause();
    const reasons = (await Promise.all(errors)) as TunnelError[];
    const elapsed = performance.now() - started;
    expect(new Set(reasons.map((e) => e.reason))).toEqual(new Set(['PING_TIMEOUT']));
    expect(pair.server.closed).toBe(true);
    expect(pair.server.openStreams).toBe(0);
    // Liveness is timer-driven: dead within one interval plus the timeout.
    expect(elapsed).toBeLessThan(100 + 300 + 1000);
    await pair.close();
    pair = undefined;
  });

  it('keeps what it hands to the transport bounded while a writer outpaces it', async () => {
    pair = await wsPair({ pingIntervalMs: 0 });
    echo(pair.agent);
    const s = await pair.server.open(tcp);
    const back = sink();
    const reading = pipeline(s, back);
    let peak = 0;
    const sampler = setInterval(() => (peak = Math.max(peak, pair!.server.outstanding)), 1);
    await pipeline(source(64 << 20), async function* (src) {
      for await (const c of src) {
        peak = Math.max(peak, pair!.server.outstanding);
        yield c;
      }
    }, s);
    await reading;
    clearInterval(sampler);
    expect(back.bytes).toBe(64 << 20);
    expect(peak).toBeLessThanOrEqual(256 * 1024 + 256 * 1024 + 64 * 1024);
    await settled(pair);
  });

  it('a peer sending beyond its window gets that stream reset, others continue', async () => {
    const [ta, tb] = MemoryTransport.pair();
    const server = new Session(ta, { role: 'server', pingIntervalMs: 0, initialWindow: 1024 });
    const agent = new Session(tb, { role: 'agent', pingIntervalMs: 0, initialWindow: 1024 });
    pair = { server, agent, close: async () => (server.close(), agent.close()) };
    const accepted: MuxStream[] = [];
    agent.on('open', (inc: IncomingOpen) => accepted.push(inc.accept()));
    const s1 = await server.open(tcp);
    const s2 = await server.open(tcp);
    // Forge a DATA frame of 2 KiB on s1 from the agent, past the 1 KiB window.
    const { encodeFrame, FrameType } = await import('../src/protocol/index.js');
    tb.send(encodeFrame({ type: FrameType.DATA, streamId: s1.id, data: Buffer.alloc(2048) }), () => {});
    await closed(s1);
    expect((s1.errored as TunnelError).reason).toBe('FLOW_CONTROL');
    const back = readAll(s2);
    accepted[1]!.resume();
    accepted[1]!.end('fine');
    s2.end();
    expect((await back).toString()).toBe('fine');
    await settled(pair);
  });
});

describe('window autotuning', () => {
  it('a reader that keeps up grows its window; one that stalls keeps the initial window', async () => {
    pair = await wsPair({ pingIntervalMs: 0, initialWindow: 64 * 1024, maxWindow: 1024 * 1024 });
    const agentSide = new Map<string, MuxStream>();
    pair.agent.on('open', (inc: IncomingOpen) => {
      const s = inc.accept();
      agentSide.set(inc.request.target, s);
      s.resume();
      source(32 << 20).pipe(s);
    });
    const fast = await pair.server.open({ kind: 'tcp', target: 'fast' });
    await pipeline(fast, sink());
    expect(fast.window).toBeGreaterThan(64 * 1024);
    expect(fast.window).toBeLessThanOrEqual(1024 * 1024);
    fast.end();
    const stalled = await pair.server.open({ kind: 'tcp', target: 'stalled' });
    // Nothing reads it: the agent fills its window and stops there.
    while (stalled.readableLength < 64 * 1024) await new Promise((r) => setImmediate(r));
    expect(stalled.window).toBe(64 * 1024);
    expect(stalled.bytesIn).toBeLessThanOrEqual(64 * 1024);
    stalled.destroy();
    await closed(agentSide.get('stalled')!);
    await settled(pair);
  });
});

describe('message buffers', () => {
  it('a pooled message is not reused before the transport is done with it', async () => {
    // Like ws: the buffer is referenced, not copied, until the send callback.
    // Callbacks run late, after later messages were framed, and each message
    // must still hold what it held when sent.
    const [a, b] = MemoryTransport.pair();
    const sent: Array<{ message: Buffer; copy: Buffer; cb: (err?: Error) => void }> = [];
    const deliver = a.send.bind(a);
    a.send = (message, cb) => sent.push({ message, copy: Buffer.from(message), cb: (err) => (err ? cb(err) : deliver(message, cb)) });
    let changed = 0;
    const flushLater = setInterval(() => {
      for (const s of sent.splice(0, 2)) {
        if (!s.message.equals(s.copy)) changed++;
        s.cb();
      }
    }, 1);
    pair = { server: new Session(a, { role: 'server', pingIntervalMs: 0 }), agent: new Session(b, { role: 'agent', pingIntervalMs: 0 }), close: async () => {} };
    pair.close = async () => {
      clearInterval(flushLater);
      pair!.server.close();
      pair!.agent.close();
      await new Promise((r) => setImmediate(r));
    };
    echo(pair.agent);
    const payload = randomBytes(8 << 20);
    const s = await pair.server.open(tcp);
    const back = readAll(s);
    s.end(payload);
    expect((await back).equals(payload)).toBe(true);
    expect(changed).toBe(0);
    const pool = poolFor(Defaults.maxMessageSize + Defaults.maxFrameSize + 2 * HEADER_SIZE);
    expect(pool.idle).toBeGreaterThan(0);
    expect(pool.idle).toBeLessThanOrEqual(16);
    await settled(pair);
  });

  it('small messages are not assembled in pooled buffers; large ones are', async () => {
    // A process with many sessions has more small messages in flight than the
    // pool keeps, and each one past it took a fresh buffer of maxMessageSize.
    const pool = poolFor(Defaults.maxMessageSize + Defaults.maxFrameSize + 2 * HEADER_SIZE);
    const take = vi.spyOn(pool, 'take');
    try {
      pair = memoryPair({ pingIntervalMs: 0 });
      echo(pair.agent);
      const streams = await Promise.all(Array.from({ length: 20 }, () => pair!.server.open(tcp)));
      const small = randomBytes(300);
      const back = await Promise.all(streams.map((s) => (s.end(small), readAll(s))));
      expect(back.every((b) => b.equals(small))).toBe(true);
      expect(take).not.toHaveBeenCalled();

      const large = randomBytes(200 * 1024);
      const s = await pair.server.open(tcp);
      const echoed = readAll(s);
      s.end(large);
      expect((await echoed).equals(large)).toBe(true);
      expect(take).toHaveBeenCalled();
      await settled(pair);
    } finally {
      take.mockRestore();
    }
  });

  it('BufferPool keeps at most its limit of idle buffers', () => {
    const pool = new BufferPool(1024, 2);
    const taken = [pool.take(), pool.take(), pool.take()];
    expect(taken.every((b) => b.length === 1024)).toBe(true);
    expect(new Set(taken).size).toBe(3);
    for (const b of taken) pool.give(b);
    expect(pool.idle).toBe(2);
    expect(pool.take()).toBe(taken[1]);
  });
});
