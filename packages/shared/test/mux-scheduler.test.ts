/**
 * The Scheduler's contract, against a transport that records each message
 * and completes its send only when the test says so: control frames first,
 * DATA round-robin, one message per turn, nothing framed past the
 * high-water mark, a PONG and a WINDOW updated in place while queued.
 */
import { EventEmitter } from 'node:events';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { TunnelError } from '../src/errors.js';
import { FrameType, decodeMessage, type Frame } from '../src/protocol/index.js';
import { MuxStream, type FrameTransport, type StreamHost } from '../src/mux/index.js';
import { Scheduler, type SchedulerLimits } from '../src/mux/scheduler.js';
import { expectNoLeaks, liveResources } from './helpers.js';

const tcp = { kind: 'tcp' as const, target: 'apiserver' };

/** Keeps every message; its send completes when complete() is called. */
class RecordingTransport extends EventEmitter implements FrameTransport {
  readonly messages: Frame[][] = [];
  private readonly callbacks: Array<(err?: Error) => void> = [];
  send(message: Buffer, cb: (err?: Error) => void): void {
    this.messages.push(decodeMessage(message, { maxPayload: 1 << 20 }));
    this.callbacks.push(cb);
  }
  /** Completes the sends handed over so far. */
  complete(): void {
    for (const cb of this.callbacks.splice(0)) cb();
  }
  close(): void {}
  terminate(): void {}
}

const limits: SchedulerLimits = {
  maxFrameSize: 100,
  maxMessageSize: 1000,
  highWater: 1 << 20,
  maxControlFrames: 100,
  maxControlBytes: 1 << 20,
  sendStallTimeoutMs: 5000,
};

let before: Record<string, number>;
let stopScheduler: (() => void) | undefined;

beforeEach(() => {
  before = liveResources();
});

afterEach(async () => {
  stopScheduler?.();
  stopScheduler = undefined;
  await expectNoLeaks(before);
});

function setup(overrides: Partial<SchedulerLimits> = {}) {
  const transport = new RecordingTransport();
  const failures: TunnelError[] = [];
  const scheduler = new Scheduler(transport, { ...limits, ...overrides }, (err) => failures.push(err));
  stopScheduler = () => scheduler.stop();
  const host: StreamHost = {
    initialWindow: 1 << 16,
    maxWindow: 1 << 16,
    schedule: (s) => scheduler.schedule(s),
    sendWindow: (s, n) => scheduler.window(s.id, n),
    release: () => {},
  };
  const stream = (id: number) => {
    const s = new MuxStream(host, id, tcp, 1 << 16);
    s.onOpened(1 << 16);
    return s;
  };
  return { transport, scheduler, stream, failures };
}

const tick = () => new Promise((r) => setImmediate(r));
const summary = (frames: Frame[]) => frames.map((f) => `${f.type === FrameType.DATA ? 'DATA' : f.type === FrameType.FIN ? 'FIN' : f.type}:${f.streamId}`);

describe('Scheduler', () => {
  it('sends control frames first, then DATA round-robin one frame per stream per turn, all in one message', async () => {
    const { transport, scheduler, stream } = setup();
    const a = stream(1);
    const b = stream(3);
    a.write(Buffer.alloc(300, 1));
    b.write(Buffer.alloc(200, 2));
    scheduler.queueControl({ type: FrameType.GOAWAY, streamId: 0, code: 6, message: 'draining' });
    await tick();
    expect(transport.messages).toHaveLength(1);
    expect(summary(transport.messages[0]!)).toEqual([`${FrameType.GOAWAY}:0`, 'DATA:1', 'DATA:3', 'DATA:1', 'DATA:3', 'DATA:1']);
    expect(transport.messages[0]!.filter((f) => f.type === FrameType.DATA).every((f) => f.type === FrameType.DATA && f.data.length === 100)).toBe(true);
    expect(scheduler.bytesOut).toBe(500);
    transport.complete();
    a.destroy();
    b.destroy();
  });

  it('frames nothing more while the bytes handed to the transport are at the high-water mark, and goes on as sends complete', async () => {
    const { transport, scheduler, stream } = setup({ highWater: 1, maxMessageSize: 100 });
    const a = stream(1);
    a.write(Buffer.alloc(300, 1));
    await tick();
    expect(transport.messages).toHaveLength(1);
    expect(scheduler.outstanding).toBe(110);
    await tick();
    expect(transport.messages).toHaveLength(1);
    for (let sent = 2; sent <= 3; sent++) {
      transport.complete();
      expect(transport.messages).toHaveLength(sent);
    }
    transport.complete();
    expect(scheduler.outstanding).toBe(0);
    expect(scheduler.bytesOut).toBe(300);
    a.destroy();
  });

  it('updates a queued PONG and a queued WINDOW in place instead of queueing more', async () => {
    const { transport, scheduler } = setup({ highWater: 1 });
    // One message in flight: what follows stays queued.
    scheduler.queueControl({ type: FrameType.PING, streamId: 0, payload: 1n });
    await tick();
    for (const nonce of [7n, 8n, 9n]) scheduler.pong(nonce);
    for (const increment of [10, 20, 30]) scheduler.window(5, increment);
    scheduler.window(7, 1);
    transport.complete();
    expect(transport.messages).toHaveLength(2);
    expect(transport.messages[1]).toEqual([
      { type: FrameType.PONG, streamId: 0, payload: 9n },
      { type: FrameType.WINDOW, streamId: 5, increment: 60 },
      { type: FrameType.WINDOW, streamId: 7, increment: 1 },
    ]);
    transport.complete();
  });

  it('reports a control queue past its bound through fail, once stopped it queues and sends nothing', async () => {
    const { transport, scheduler, failures, stream } = setup({ highWater: 1, maxControlFrames: 3 });
    scheduler.queueControl({ type: FrameType.PING, streamId: 0, payload: 1n });
    await tick();
    for (let i = 0; i < 4; i++) scheduler.queueControl({ type: FrameType.FIN, streamId: 2 * i + 1 });
    expect(failures.map((f) => f.reason)).toEqual(['CONTROL_QUEUE_FULL']);
    scheduler.stop();
    const a = stream(1);
    a.write('after stop');
    scheduler.queueControl({ type: FrameType.PING, streamId: 0, payload: 2n });
    transport.complete();
    await tick();
    expect(transport.messages).toHaveLength(1);
    a.destroy();
  });
});
