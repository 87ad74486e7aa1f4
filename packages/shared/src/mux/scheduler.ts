import { TunnelError } from '../errors.js';
import { encodeFrame, writeHeader } from '../protocol/codec.js';
import { FrameType, HEADER_SIZE, MAX_WINDOW, type Frame } from '../protocol/frame.js';
import { poolFor, type BufferPool } from './pool.js';
import type { MuxStream } from './stream.js';
import type { FrameTransport } from './transport.js';

export interface SchedulerLimits {
  /** Largest DATA payload. */
  maxFrameSize: number;
  /** Most bytes put into one transport message. */
  maxMessageSize: number;
  /** No framing while this many bytes are handed to the transport and not yet sent. */
  highWater: number;
  /** Bounds of the control queue. */
  maxControlFrames: number;
  maxControlBytes: number;
  /** A transport that completes no send for this long has a peer that stopped reading. */
  sendStallTimeoutMs: number;
}

/**
 * Messages up to this size are not assembled in a pooled buffer. The pool
 * keeps 16 buffers of maxMessageSize for the whole process; a process with
 * many sessions (the hub, an agent pool) can have more small messages in
 * flight than that at once, and each one past the pool took a fresh buffer of
 * about 288 KiB, the size V8 counts towards its next major GC, to carry a
 * few hundred bytes. A small message costs only its own bytes.
 */
const SMALL_MESSAGE = 16 * 1024;

/**
 * The sending half of a session: what goes to the transport, in which order,
 * and how much of it may be in flight.
 *
 * Order: control frames first, in the order queued (a PONG and a stream's
 * WINDOW are updated in place while still queued); then DATA round-robin
 * over the streams that have something to send, one frame per stream per
 * turn, a stream's FIN after its last DATA. Every frame taken in one turn
 * goes out as one transport message; a large one is assembled in a pooled
 * buffer that is reused once the transport's send completes, a small one
 * (SMALL_MESSAGE) in a buffer of its own size.
 *
 * Back pressure: framing stops while `outstanding` (bytes handed to the
 * transport whose send has not completed) is at the high-water mark, and
 * resumes as sends complete. DATA waits in its stream meanwhile (bounded by
 * the stream's writable buffer and the peer's credit); control frames wait
 * here, bounded.
 *
 * Failures: a control queue past its bound, a transport that completes no
 * send for sendStallTimeoutMs, or a send that fails are reported once each
 * through `fail`; the owner then closes the session and calls stop(). The
 * scheduler never closes the transport itself.
 */
export class Scheduler {
  private readonly transport: FrameTransport;
  private readonly limits: SchedulerLimits;
  private readonly fail: (err: TunnelError) => void;
  /** Buffers messages are assembled in (a message may overrun maxMessageSize by one frame). */
  private readonly pool: BufferPool;

  /** Encoded control frames, sent before any DATA. Added by queueControl/pong/window, taken by sendBatch, dropped by stop. */
  private control: Buffer[] = [];
  /** Bytes in `control`; written with it. */
  private controlBytes = 0;
  /** The queued PONG (only the latest PING needs an answer); written by pong, cleared as it is sent. */
  private queuedPong: Buffer | undefined;
  /** Queued WINDOW frames by stream (a new grant adds to the queued one); written by window, cleared as they are sent. */
  private readonly queuedWindows = new Map<number, Buffer>();
  /** Streams with DATA or FIN to send, in turn order. Added by schedule and sendBatch, taken by sendBatch. */
  private ready: MuxStream[] = [];
  private readonly inReady = new WeakSet<MuxStream>();
  /** Bytes handed to the transport whose send has not completed: added by sendBatch, subtracted by its send callback. */
  private _outstanding = 0;
  /** DATA payload bytes framed (sendBatch). */
  private _bytesOut = 0;
  /** When a send last completed (or the transport last went from idle to busy). */
  private lastSendProgress = 0;
  private stallTimer: NodeJS.Timeout | undefined;
  private flushQueued = false;
  private flushing = false;
  private immediate: NodeJS.Immediate | undefined;
  /** Set once by stop(): nothing more is queued or sent. */
  private stopped = false;

  constructor(transport: FrameTransport, limits: SchedulerLimits, fail: (err: TunnelError) => void) {
    this.transport = transport;
    this.limits = limits;
    this.fail = fail;
    this.pool = poolFor(limits.maxMessageSize + limits.maxFrameSize + 2 * HEADER_SIZE);
  }

  /** Bytes handed to the transport whose send has not completed. */
  get outstanding(): number {
    return this._outstanding;
  }

  /** DATA payload bytes sent. */
  get bytesOut(): number {
    return this._bytesOut;
  }

  /** Queues a control frame (anything but DATA). */
  queueControl(frame: Frame): void {
    this.enqueue(encodeFrame(frame));
  }

  /** Answers a PING: rewrites the PONG still queued, if any, rather than queue a second one. */
  pong(nonce: bigint): void {
    if (this.queuedPong) {
      this.queuedPong.writeBigUInt64BE(nonce, HEADER_SIZE);
      return;
    }
    this.queuedPong = this.enqueue(encodeFrame({ type: FrameType.PONG, streamId: 0, payload: nonce }));
  }

  /** Grants `increment` bytes of window on `streamId`, added to a WINDOW for it still queued if any. */
  window(streamId: number, increment: number): void {
    const queued = this.queuedWindows.get(streamId);
    if (queued) {
      const total = queued.readUInt32BE(HEADER_SIZE) + increment;
      if (total <= MAX_WINDOW) {
        queued.writeUInt32BE(total, HEADER_SIZE);
        return;
      }
    }
    const frame = this.enqueue(encodeFrame({ type: FrameType.WINDOW, streamId, increment }));
    if (!this.stopped) this.queuedWindows.set(streamId, frame);
  }

  /** The stream has DATA or FIN to send: it joins the turn order (once). */
  schedule(stream: MuxStream): void {
    if (this.stopped || this.inReady.has(stream) || !stream.sendable) return;
    this.inReady.add(stream);
    this.ready.push(stream);
    this.requestFlush();
  }

  /** Sends the queued control frames now (a final GOAWAY, RESETs), unless a flush is under way. */
  flushControl(): void {
    if (this.control.length > 0 && !this.flushing) this.flush();
  }

  /** Ends scheduling: drops what is queued and clears the timers. Sends already handed over complete on their own. */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.stallTimer);
    this.stallTimer = undefined;
    if (this.immediate) clearImmediate(this.immediate);
    this.control = [];
    this.controlBytes = 0;
    this.queuedPong = undefined;
    this.queuedWindows.clear();
    this.ready = [];
  }

  /**
   * Queues an encoded control frame. The queue only grows while the peer does
   * not read (the transport is at its high-water mark); past its bound the
   * session fails rather than hold more for a peer that does not take it.
   */
  private enqueue(frame: Buffer): Buffer {
    if (this.stopped) return frame;
    if (this.control.length >= this.limits.maxControlFrames || this.controlBytes + frame.length > this.limits.maxControlBytes) {
      this.fail(
        new TunnelError('CONTROL_QUEUE_FULL', `${this.control.length} control frames (${this.controlBytes} bytes) queued for a peer that does not read them`),
      );
      return frame;
    }
    this.control.push(frame);
    this.controlBytes += frame.length;
    this.requestFlush();
    return frame;
  }

  /**
   * Frames what is queued, soon. With nothing in flight the frames go out at
   * the end of the current callback (a small request pays no extra loop
   * turn); while the transport is busy they wait for the check phase, so the
   * writes of every socket read in this loop turn share one message.
   */
  private requestFlush(): void {
    if (this.flushQueued || this.stopped) return;
    this.flushQueued = true;
    if (this._outstanding === 0) process.nextTick(this.onFlushDue);
    else this.immediate = setImmediate(this.onFlushDue);
  }

  private readonly onFlushDue = (): void => {
    if (!this.flushQueued) return;
    this.flushQueued = false;
    if (this.immediate) clearImmediate(this.immediate);
    this.immediate = undefined;
    this.flush();
  };

  private flush(): void {
    if (this.flushing || this.stopped) return;
    this.flushing = true;
    try {
      while (this._outstanding < this.limits.highWater && !this.stopped) {
        if (!this.sendBatch()) break;
      }
    } finally {
      this.flushing = false;
    }
  }

  /** Frames one message and hands it to the transport; false when there was nothing to send. */
  private sendBatch(): boolean {
    const parts: Buffer[] = [];
    const done: Array<(err?: Error | null) => void> = [];
    let size = this.takeControl(parts, 0);
    size = this.takeData(parts, done, size);
    if (parts.length === 0) return false;
    const { message, borrowed } = this.assemble(parts, size);
    if (this._outstanding === 0) this.lastSendProgress = performance.now();
    this._outstanding += message.length;
    this.stallTimer ??= setTimeout(this.onStallCheck, this.limits.sendStallTimeoutMs);
    this.transport.send(message, (err) => {
      if (borrowed) this.pool.give(borrowed);
      this._outstanding -= message.length;
      this.lastSendProgress = performance.now();
      if (err) this.fail(new TunnelError('SESSION_CLOSED', err.message));
      else if (this._outstanding < this.limits.highWater && (this.control.length > 0 || this.ready.length > 0)) this.flush();
    });
    for (const cb of done) cb();
    return true;
  }

  /** Moves queued control frames into `parts` while the message has room; returns its new size. */
  private takeControl(parts: Buffer[], size: number): number {
    while (this.control.length > 0 && size < this.limits.maxMessageSize) {
      const b = this.control.shift()!;
      this.controlBytes -= b.length;
      if (b === this.queuedPong) this.queuedPong = undefined;
      else if (b[0] === FrameType.WINDOW) {
        const id = b.readUInt32BE(2);
        if (this.queuedWindows.get(id) === b) this.queuedWindows.delete(id);
      }
      parts.push(b);
      size += b.length;
    }
    return size;
  }

  /**
   * Adds DATA (and FIN) frames round-robin while the message has room: one
   * frame per ready stream per turn; a stream with more to send goes to the
   * back of the line. Returns the message's new size.
   */
  private takeData(parts: Buffer[], done: Array<(err?: Error | null) => void>, size: number): number {
    while (size < this.limits.maxMessageSize && this.ready.length > 0) {
      const s = this.ready.shift()!;
      this.inReady.delete(s);
      // Ended since it was scheduled, or out of credit.
      if (!s.sendable) continue;
      const data = s.takeData(this.limits.maxFrameSize, done);
      if (data) {
        const header = Buffer.allocUnsafe(HEADER_SIZE);
        writeHeader(header, 0, FrameType.DATA, s.id, data.length);
        parts.push(header, data);
        size += HEADER_SIZE + data.length;
        this._bytesOut += data.length;
      }
      if (s.takeFin()) {
        const fin = encodeFrame({ type: FrameType.FIN, streamId: s.id });
        parts.push(fin);
        size += fin.length;
      }
      if (s.sendable) {
        this.inReady.add(s);
        this.ready.push(s);
      }
    }
    return size;
  }

  /** One message of `parts`: the part itself, or the parts copied into one buffer, a pooled one for a large message (`borrowed`, given back after the send). */
  private assemble(parts: Buffer[], size: number): { message: Buffer; borrowed: Buffer | undefined } {
    if (parts.length === 1) return { message: parts[0]!, borrowed: undefined };
    if (size <= SMALL_MESSAGE || size > this.pool.size) return { message: Buffer.concat(parts, size), borrowed: undefined };
    const borrowed = this.pool.take();
    let at = 0;
    for (const part of parts) at += part.copy(borrowed, at);
    return { message: borrowed.subarray(0, size), borrowed };
  }

  /** Fails the session if the transport has completed no send for sendStallTimeoutMs while sends are outstanding. */
  private readonly onStallCheck = (): void => {
    this.stallTimer = undefined;
    if (this.stopped || this._outstanding === 0) return;
    const idle = performance.now() - this.lastSendProgress;
    if (idle >= this.limits.sendStallTimeoutMs) {
      this.fail(new TunnelError('PEER_NOT_READING', `${this._outstanding} bytes unsent for ${Math.round(idle)} ms`));
      return;
    }
    this.stallTimer = setTimeout(this.onStallCheck, this.limits.sendStallTimeoutMs - idle);
  };
}
