/**
 * A stream's explicit state (opening, open, localClosed, remoteClosed,
 * closed, reset) as its half-closes and resets happen, and the read-only
 * surface of Session and MuxStream: what the session and the stream own,
 * nobody else writes.
 */
import { describe, expect, it } from 'vitest';
import { TunnelError } from '../src/errors.js';
import { FrameType, decodeMessage, encodeFrames, type Frame } from '../src/protocol/index.js';
import { MemoryTransport, MuxStream, Session, type StreamHost } from '../src/mux/index.js';
import { cleanEachTest, closed, memoryPair, openAccepted, readAll } from './helpers.js';

const tcp = { kind: 'tcp' as const, target: 'apiserver' };

const scope = cleanEachTest();

const ended = (s: MuxStream) => new Promise<void>((resolve) => s.once('end', resolve));

describe('stream state', () => {
  it('follows each half-close: open, then localClosed on the side that sent FIN and remoteClosed on the other, then closed', async () => {
    const pair = scope.use(memoryPair({ pingIntervalMs: 0 }));
    const [s, agentSide] = await openAccepted(pair);
    expect([s.state, agentSide.state]).toEqual(['open', 'open']);

    const agentRead = readAll(agentSide);
    s.end('from server');
    expect((await agentRead).toString()).toBe('from server');
    expect([s.state, agentSide.state]).toEqual(['localClosed', 'remoteClosed']);

    const serverRead = readAll(s);
    agentSide.end('from agent');
    expect((await serverRead).toString()).toBe('from agent');
    expect(s.state).toBe('closed');
    await Promise.all([closed(s), closed(agentSide)]);
    expect([s.state, agentSide.state]).toEqual(['closed', 'closed']);
  });

  it('a RESET leaves the stream that received it in reset; the side that destroyed it is closed', async () => {
    const pair = scope.use(memoryPair({ pingIntervalMs: 0 }));
    const [s, agentSide] = await openAccepted(pair);
    const serverClosed = closed(s);
    agentSide.destroy(new TunnelError('UPSTREAM_RESET'));
    expect(((await serverClosed) as TunnelError).reason).toBe('UPSTREAM_RESET');
    expect([s.state, agentSide.state]).toEqual(['reset', 'closed']);
  });

  it('a session that ends leaves its streams in reset', async () => {
    const pair = scope.use(memoryPair({ pingIntervalMs: 0 }));
    const [s, agentSide] = await openAccepted(pair);
    const both = Promise.all([closed(s), closed(agentSide)]);
    pair.server.close();
    await both;
    expect([s.state, agentSide.state]).toEqual(['reset', 'reset']);
  });

  it('a FIN before OPEN_OK ends the receiving side at once: the stream opens in remoteClosed and may still send', async () => {
    const [mine, theirs] = MemoryTransport.pair();
    const session = new Session(mine, { role: 'server', pingIntervalMs: 0 });
    scope.cleanups.push(() => session.close());
    const received: Frame[] = [];
    theirs.on('message', (m: Buffer) => received.push(...decodeMessage(m)));
    const send = (frames: Frame[]) => new Promise<void>((resolve) => theirs.send(encodeFrames(frames), () => resolve()));

    const opening = session.open(tcp);
    await send([
      { type: FrameType.FIN, streamId: 1 },
      { type: FrameType.OPEN_OK, streamId: 1, window: 1024 },
    ]);
    const s = await opening;
    expect(s.state).toBe('remoteClosed');
    expect((await readAll(s)).length).toBe(0);
    const fin = new Promise<void>((resolve) => theirs.on('message', () => received.some((f) => f.type === FrameType.FIN) && resolve()));
    s.end('last');
    await fin;
    expect(received.filter((f) => f.streamId === 1).map((f) => f.type)).toEqual([FrameType.OPEN, FrameType.DATA, FrameType.FIN]);
    await closed(s);
    expect(s.state).toBe('closed');
  });
});

describe('read-only surface', () => {
  it("Session's and MuxStream's state can be read but not written from outside", async () => {
    const pair = scope.use(memoryPair({ pingIntervalMs: 0 }));
    const [s, agentSide] = await openAccepted(pair);
    const session = pair.server;
    expect(session.closed).toBe(false);
    const writes: Array<() => void> = [
      // @ts-expect-error read-only
      () => (session.closed = true),
      // @ts-expect-error read-only
      () => (session.draining = true),
      // @ts-expect-error read-only
      () => (session.peerDraining = true),
      // @ts-expect-error read-only
      () => (session.rttMs = 1),
      // @ts-expect-error read-only
      () => (session.bytesIn = 1),
      // @ts-expect-error read-only
      () => (session.bytesOut = 1),
      // @ts-expect-error read-only
      () => (session.outstanding = 1),
      // @ts-expect-error read-only
      () => (s.state = 'closed'),
      // @ts-expect-error read-only
      () => (s.sendCredit = 1),
      // @ts-expect-error read-only
      () => (s.recvCredit = 1),
      // @ts-expect-error read-only
      () => (s.window = 1),
      // @ts-expect-error read-only
      () => (s.bytesIn = 1),
      // @ts-expect-error read-only
      () => (s.bytesOut = 1),
    ];
    for (const write of writes) expect(write).toThrow(TypeError);
    expect(session.closed).toBe(false);
    expect(s.state).toBe('open');
    // The flags the state replaced, and a getter nothing used, are gone.
    for (const gone of ['finSent', 'finReceived', 'resetReceived', 'queuedBytes']) expect(gone in s).toBe(false);
    s.destroy();
    await closed(agentSide);
  });
});

describe('an unmetered stream (a host whose transport has its own flow control)', () => {
  it('tells its host on every read that its reader drained, not only the first time', async () => {
    const drained: number[] = [];
    const host: StreamHost = {
      initialWindow: 256 * 1024,
      maxWindow: 16 * 1024 * 1024,
      schedule: () => {},
      sendWindow: (_s, increment) => drained.push(increment),
      release: () => {},
    };
    const stream = new MuxStream(host, 1, tcp, 'unmetered');
    stream.onOpened(0);
    const chunk = Buffer.alloc(64 * 1024, 1);
    for (let round = 1; round <= 3; round++) {
      const before = drained.length;
      // The host's peer sends past the buffer's high-water mark, then the reader takes it all.
      for (let i = 0; i < 8; i++) stream.onData(chunk);
      while (stream.read() !== null);
      await new Promise<void>((resolve) => setImmediate(resolve));
      expect(drained.length, `round ${round}`).toBeGreaterThan(before);
    }
    expect(new Set(drained)).toEqual(new Set([0]));
    stream.destroy();
  });
});
