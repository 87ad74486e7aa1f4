/**
 * A session against a peer that misbehaves, and against consumers that throw:
 * a stream's failure stays in its stream, every queue has a bound, and a peer
 * that exceeds one is disconnected with a reason.
 */
import { EventEmitter, once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { TunnelError } from '../src/errors.js';
import { FrameType, HEADER_SIZE, decodeMessage, encodeFrame, encodeFrames, type Frame } from '../src/protocol/index.js';
import { MemoryTransport, Session, type FrameTransport, type IncomingOpen, type MuxStream } from '../src/mux/index.js';
import { cleanEachTest, closed, memoryPair, readAll } from './helpers.js';

const tcp = { kind: 'tcp' as const, target: 'apiserver' };

const scope = cleanEachTest();

/** Accepts every OPEN and echoes the stream's bytes back. */
function echo(session: Session): void {
  session.on('open', (inc: IncomingOpen) => {
    const s = inc.accept();
    s.pipe(s);
  });
}

async function roundTrip(session: Session, text: string): Promise<string> {
  const s = await session.open(tcp);
  const back = readAll(s);
  s.end(text);
  return (await back).toString();
}

/**
 * A session on one end of a memory transport, and a raw peer on the other
 * that sends whatever frames a test gives it and records what it receives.
 */
function rawPeer(role: 'server' | 'agent', opts: Record<string, number> = {}) {
  const [mine, theirs] = MemoryTransport.pair();
  const session = new Session(mine, { role, pingIntervalMs: 0, ...opts });
  const received: Frame[] = [];
  theirs.on('message', (m: Buffer) => received.push(...decodeMessage(m, { maxPayload: 1 << 20 })));
  const send = (frames: Frame[] | Buffer) =>
    new Promise<void>((resolve) => theirs.send(Buffer.isBuffer(frames) ? frames : encodeFrames(frames), () => resolve()));
  scope.cleanups.push(() => session.close());
  return { session, received, send, transport: theirs };
}

/** A transport whose sends never complete: a peer that does not read. */
class StalledTransport extends EventEmitter implements FrameTransport {
  sent = 0;
  send(_message: Buffer, _cb: (err?: Error) => void): void {
    this.sent++;
  }
  close(): void {
    setImmediate(() => this.emit('close', undefined));
  }
  terminate(): void {
    this.close();
  }
}

const closeReason = (s: Session) =>
  new Promise<string | undefined>((resolve) => s.once('close', (err?: Error) => resolve(err instanceof TunnelError ? err.reason : err?.message)));

describe("a stream's failure stays in its stream", () => {
  it("a consumer that throws in 'data' resets its stream only; the session and other streams go on", async () => {
    const pair = scope.use(memoryPair({ pingIntervalMs: 0 }));
    const errors: Array<[number, string]> = [];
    pair.agent.on('streamError', (id: number, err: Error) => errors.push([id, err.message]));
    let first = true;
    pair.agent.on('open', (inc: IncomingOpen) => {
      const s = inc.accept();
      if (first) {
        first = false;
        s.on('data', () => {
          throw new TypeError('Invalid character in header content ["Impersonate-Group"]');
        });
        return;
      }
      s.pipe(s);
    });
    const bad = await pair.server.open(tcp);
    const badClosed = closed(bad);
    bad.write('anything');
    const err = await badClosed;
    expect((err as TunnelError).reason).toBe('INTERNAL');
    expect(errors).toEqual([[bad.id, 'Invalid character in header content ["Impersonate-Group"]']]);
    expect(pair.server.closed).toBe(false);
    expect(pair.agent.closed).toBe(false);
    expect(await roundTrip(pair.server, 'still here')).toBe('still here');
  });

  it("an 'open' listener that throws refuses that OPEN (or resets the stream it accepted); the session goes on", async () => {
    const pair = scope.use(memoryPair({ pingIntervalMs: 0 }));
    const errors: number[] = [];
    pair.agent.on('streamError', (id: number) => errors.push(id));
    let n = 0;
    pair.agent.on('open', (inc: IncomingOpen) => {
      n++;
      if (n === 1) throw new Error('refused by a throwing listener');
      const s = inc.accept();
      if (n === 2) throw new Error('accepted, then threw');
      s.pipe(s);
    });
    await expect(pair.server.open(tcp)).rejects.toMatchObject({ reason: 'INTERNAL' });
    const accepted = await pair.server.open(tcp);
    expect((await closed(accepted)) as TunnelError).toMatchObject({ reason: 'INTERNAL' });
    expect(errors).toHaveLength(2);
    expect(pair.server.closed || pair.agent.closed).toBe(false);
    expect(await roundTrip(pair.server, 'third')).toBe('third');
  });

  it('a peer that sends beyond a live stream\'s window resets that stream only', async () => {
    const { session, send, received } = rawPeer('agent', { initialWindow: 1024 });
    echo(session);
    await send([{ type: FrameType.OPEN, streamId: 1, window: 1024, request: tcp }]);
    await send([{ type: FrameType.DATA, streamId: 1, data: Buffer.alloc(1025) }]);
    await new Promise((r) => setImmediate(r));
    expect(session.closed).toBe(false);
    expect(received.find((f) => f.type === FrameType.RESET && f.streamId === 1)).toMatchObject({ code: 2 });
  });
});

describe('bounded queues', () => {
  it('answers a burst of PINGs with one PONG carrying the latest nonce', async () => {
    const { session, send, received } = rawPeer('server');
    const pings: Frame[] = [1n, 2n, 3n].map((payload) => ({ type: FrameType.PING, streamId: 0, payload }));
    await send(pings);
    await new Promise((r) => setImmediate(r));
    expect(received).toEqual([{ type: FrameType.PONG, streamId: 0, payload: 3n }]);
    expect(session.closed).toBe(false);
  });

  it('disconnects a PING flood with PING_FLOOD', async () => {
    const { session, send } = rawPeer('server');
    const reason = closeReason(session);
    const pings: Frame[] = Array.from({ length: 1000 }, (_, i) => ({ type: FrameType.PING, streamId: 0, payload: BigInt(i) }));
    await send(pings);
    expect(await reason).toBe('PING_FLOOD');
  });

  it('a peer that does not read while it makes us queue OPEN_ERRs is disconnected with CONTROL_QUEUE_FULL', async () => {
    const t = new StalledTransport();
    // One send in flight that never completes: every later frame queues.
    const session = new Session(t, { role: 'server', pingIntervalMs: 0, maxControlFrames: 100, transportHighWater: 1 });
    scope.cleanups.push(() => session.close());
    const reason = closeReason(session);
    const opens: Frame[] = Array.from({ length: 200 }, (_, i) => ({ type: FrameType.OPEN, streamId: 2 + 2 * i, window: 1024, request: tcp }));
    for (const f of opens) {
      t.emit('message', encodeFrame(f));
      await new Promise((r) => setImmediate(r));
      if (session.closed) break;
    }
    expect(await reason).toBe('CONTROL_QUEUE_FULL');
    expect(t.sent).toBe(1);
  });

  it('a transport that completes no send for sendStallTimeoutMs ends the session with PEER_NOT_READING', async () => {
    const t = new StalledTransport();
    const session = new Session(t, { role: 'server', pingIntervalMs: 0, sendStallTimeoutMs: 200 });
    scope.cleanups.push(() => session.close());
    const reason = closeReason(session);
    const opened = session.open(tcp).catch((err: TunnelError) => err.reason);
    expect(await reason).toBe('PEER_NOT_READING');
    expect(await opened).toBe('PEER_NOT_READING');
  });

  it('refuses OPENs beyond maxPendingIncoming while dials are in progress', async () => {
    const { session, send, received } = rawPeer('agent', { maxPendingIncoming: 2 });
    const pending: IncomingOpen[] = [];
    session.on('open', (inc: IncomingOpen) => pending.push(inc));
    await send([2, 4, 6].map((i) => ({ type: FrameType.OPEN, streamId: i + 1, window: 1024, request: tcp })));
    await new Promise((r) => setImmediate(r));
    expect(pending.map((p) => p.streamId)).toEqual([3, 5]);
    expect(received).toEqual([{ type: FrameType.OPEN_ERR, streamId: 7, code: 8, message: 'too many opens in progress' }]);
    for (const p of pending) p.reject('CANCELLED');
    expect(session.pendingIncoming).toBe(0);
  });

  it('an idle tunnel carries one PING exchange per interval: the agent PINGs only when it heard nothing for a whole interval', async () => {
    const [a, b] = MemoryTransport.pair();
    const pings = { server: 0, agent: 0 };
    a.on('message', (m: Buffer) => {
      for (const f of decodeMessage(m)) if (f.type === FrameType.PING) pings.agent += 1;
    });
    const serverPinged = new EventEmitter();
    b.on('message', (m: Buffer) => {
      for (const f of decodeMessage(m)) if (f.type === FrameType.PING && ++pings.server === 10) serverPinged.emit('ten');
    });
    const server = new Session(a, { role: 'server', pingIntervalMs: 30, pingTimeoutMs: 5000 });
    const agent = new Session(b, { role: 'agent', pingIntervalMs: 30, pingTimeoutMs: 300 });
    scope.cleanups.push(() => server.close(), () => agent.close());
    await once(serverPinged, 'ten');
    // The first PING of each side at the start, then the server's alone (some slack: a late server tick leaves
    // the agent a silent interval now and then on a loaded machine). Both PINGing would be 10 each.
    expect(pings.agent).toBeLessThanOrEqual(4);
    // The server falls silent (nothing it sends arrives): the agent PINGs it, and finds it dead.
    const before = pings.agent;
    const reason = closeReason(agent);
    a.send = (_message: Buffer, cb: (err?: Error) => void) => cb();
    expect(await reason).toBe('PING_TIMEOUT');
    expect(pings.agent).toBeGreaterThan(before);
  });

  it('PING nonces are random: a PONG to a PING never received does not keep a dead peer alive', async () => {
    const [mine, theirs] = MemoryTransport.pair();
    const session = new Session(mine, { role: 'server', pingIntervalMs: 50, pingTimeoutMs: 300 });
    scope.cleanups.push(() => session.close());
    const nonces: bigint[] = [];
    theirs.on('message', (m: Buffer) => {
      for (const f of decodeMessage(m)) if (f.type === FrameType.PING) nonces.push(f.payload);
    });
    await once(theirs, 'message');
    expect(nonces).toHaveLength(1);
    // The peer guesses instead of reading: small counters, as a counter nonce would give.
    const reason = closeReason(session);
    const guess = setInterval(() => {
      theirs.send(encodeFrames([1n, 2n, 3n].map((payload) => ({ type: FrameType.PONG, streamId: 0, payload }))), () => {});
    }, 20);
    scope.cleanups.push(() => clearInterval(guess));
    expect(await reason).toBe('PING_TIMEOUT');
    expect(nonces[0]).not.toBe(1n);
  });
});

describe('windows bound memory', () => {
  it('DATA for an ended stream counts: up to the credit the peer held, then the session ends', async () => {
    const { session, send } = rawPeer('server', { initialWindow: 4096 });
    const opened = session.open(tcp);
    await send([{ type: FrameType.OPEN_OK, streamId: 1, window: 4096 }]);
    const s = await opened;
    s.destroy(); // RESET: the peer still holds 4096 bytes of credit
    await closed(s);
    await send([{ type: FrameType.DATA, streamId: 1, data: Buffer.alloc(4000) }, { type: FrameType.FIN, streamId: 1 }]);
    await new Promise((r) => setImmediate(r));
    expect(session.closed).toBe(false);
    const reason = closeReason(session);
    await send([{ type: FrameType.DATA, streamId: 1, data: Buffer.alloc(97) }]);
    expect(await reason).toBe('PROTOCOL_ERROR');
  });

  it('frames for ended streams beyond a few each end the session', async () => {
    const { session, send } = rawPeer('server', { initialWindow: 4096 });
    const opened = session.open(tcp);
    await send([{ type: FrameType.OPEN_OK, streamId: 1, window: 4096 }]);
    (await opened).destroy();
    const reason = closeReason(session);
    const windows: Frame[] = Array.from({ length: 1000 }, () => ({ type: FrameType.WINDOW, streamId: 1, increment: 1 }));
    await send(windows);
    expect(await reason).toBe('PROTOCOL_ERROR');
  });

  it('a small payload buffered for a reader that does not read holds no view of its whole message', async () => {
    const { session, send } = rawPeer('agent', { initialWindow: 256 * 1024 });
    const streams: MuxStream[] = [];
    session.on('open', (inc: IncomingOpen) => streams.push(inc.accept()));
    await send([
      { type: FrameType.OPEN, streamId: 1, window: 1024, request: tcp },
      { type: FrameType.OPEN, streamId: 3, window: 1024, request: tcp },
    ]);
    // One message: 10 bytes for stream 1 (never read), 200 KiB for stream 3 (read).
    const message = encodeFrames([
      { type: FrameType.DATA, streamId: 1, data: Buffer.alloc(10, 1) },
      { type: FrameType.DATA, streamId: 3, data: Buffer.alloc(64 * 1024, 3) },
      { type: FrameType.DATA, streamId: 3, data: Buffer.alloc(64 * 1024, 3) },
      { type: FrameType.DATA, streamId: 3, data: Buffer.alloc(64 * 1024, 3) },
    ]);
    const drained = new Promise<number>((resolve) => {
      let n = 0;
      streams[1]!.on('data', (c: Buffer) => (n += c.length) === 3 * 64 * 1024 && resolve(n));
    });
    await send(message);
    await drained;
    const held = streams[0]!.read() as Buffer;
    expect(held.length).toBe(10);
    expect(held.buffer.byteLength).toBeLessThan(HEADER_SIZE + 64 * 1024);
    for (const s of streams) s.destroy();
  });
});
