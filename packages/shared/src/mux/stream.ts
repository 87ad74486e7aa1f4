import { Duplex } from 'node:stream';
import { TunnelError, reasonFromCode, Reasons } from '../errors.js';
import { ProtocolError } from '../protocol/codec.js';
import { MAX_WINDOW, type OpenRequest } from '../protocol/frame.js';

/** What a stream needs from its session: scheduling and frames out. */
/** A window drained this fast (ms) is too small: it doubles. Small, so a fast
 * stream never has more than a few ms of data queued ahead of its neighbours. */
const AUTOTUNE_MS = 4;

export interface StreamHost {
  readonly initialWindow: number;
  /** The most a stream's window may grow to. */
  readonly maxWindow: number;
  /** The stream has DATA or FIN to send. */
  schedule(stream: MuxStream): void;
  /** Grant `increment` more bytes of receive window to the peer. */
  sendWindow(stream: MuxStream, increment: number): void;
  /** The stream is gone; RESET the peer with `code` unless it is undefined. */
  release(stream: MuxStream, resetCode: number | undefined, message: string): void;
}

/**
 * A received payload is a view into its whole WebSocket message (up to
 * Defaults.maxWsPayload): kept as is, one unread byte would hold the whole
 * message. It is copied out unless it is most of that memory anyway, or the
 * consumer takes it at once (`takenNow`: flowing with nothing buffered, so
 * push hands it straight to the 'data' listener; what that consumer keeps is
 * bounded by its own back pressure, as pipe() pauses this stream). Measured
 * with npm run bench:mux: no change in throughput beyond the run-to-run noise.
 */
function unpinned(data: Buffer, takenNow: boolean): Buffer {
  if (takenNow || data.length * PIN_RATIO >= data.buffer.byteLength) return data;
  return Buffer.from(data);
}
/** A payload that is at least 1/PIN_RATIO of the memory it views is kept as is. */
const PIN_RATIO = 2;

interface Pending {
  buf: Buffer;
  cb: ((err?: Error | null) => void) | undefined;
}

/**
 * One stream of a session: a Node Duplex whose writes are framed as DATA
 * under the peer's credit, and whose reads grant credit back as they drain.
 *
 * Flow control invariant on the receive side: bytes buffered here plus credit
 * the peer still holds never exceed the initial window.
 */
export class MuxStream extends Duplex {
  readonly id: number;
  readonly request: OpenRequest;
  /** 'opening' until OPEN_OK (for streams this side opened). */
  state: 'opening' | 'open' | 'closed' = 'opening';

  /** Bytes the peer lets us send. */
  sendCredit = 0;
  /** Bytes we let the peer send that it has not sent yet. */
  recvCredit = 0;
  bytesIn = 0;
  bytesOut = 0;
  /** Receive window: starts at the session's initial window, grows for fast readers. */
  window: number;
  private consumedAtMark = 0;
  private markAt = performance.now();

  private readonly host: StreamHost;
  private queue: Pending[] = [];
  private queueOffset = 0;
  private finCallback: ((err?: Error | null) => void) | undefined;
  /** FIN sent / received. */
  finSent = false;
  finReceived = false;
  /** The peer sent RESET (or the session failed): the peer sends nothing more for this stream. */
  resetReceived = false;

  constructor(host: StreamHost, id: number, request: OpenRequest) {
    super({
      allowHalfOpen: true,
      readableHighWaterMark: host.initialWindow / 2,
      writableHighWaterMark: 64 * 1024,
    });
    this.host = host;
    this.window = host.initialWindow;
    this.id = id;
    // A stream's failure is reported to whoever consumes it (pipeline, their
    // own 'error' listener); it must never crash the process on its own.
    this.on('error', () => {});
    this.request = request;
  }

  /** Bytes queued for sending (accepted by _write, not yet framed). */
  get queuedBytes(): number {
    let n = -this.queueOffset;
    for (const p of this.queue) n += p.buf.length;
    return n;
  }

  /** True when the scheduler has something to send for this stream now. */
  get sendable(): boolean {
    if (this.state !== 'open') return false;
    if (this.queue.length > 0) return this.sendCredit > 0;
    return this.finCallback !== undefined && !this.finSent;
  }

  // ------------------------------------------------ Duplex implementation

  // A zero-length write frames nothing: an empty DATA frame is a protocol
  // error, and peers (Python's http.server, for one) do write empty chunks.
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (chunk.length === 0) return cb();
    this.queue.push({ buf: chunk, cb });
    this.host.schedule(this);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    const bufs = chunks.map((c) => c.chunk).filter((b) => b.length > 0);
    if (bufs.length === 0) return cb();
    const last = bufs.length - 1;
    bufs.forEach((buf, i) => this.queue.push({ buf, cb: i === last ? cb : undefined }));
    this.host.schedule(this);
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.finCallback = cb;
    this.host.schedule(this);
  }

  override _read(): void {
    this.grant();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const fin = this.finCallback;
    if (this.queue.length > 0 || fin) {
      // Writes still waiting fail; a stream that ended cleanly has none (and makes no error).
      const failure = err ?? new TunnelError('CANCELLED', 'stream destroyed');
      for (const p of this.queue) p.cb?.(failure);
      this.queue = [];
      this.finCallback = undefined;
      fin?.(failure);
    }
    const wasOpen = this.state !== 'closed';
    this.state = 'closed';
    if (wasOpen) {
      const clean = this.finSent && this.finReceived;
      const code = clean || this.resetReceived ? undefined : Reasons[err instanceof TunnelError ? err.reason : 'CANCELLED'].code;
      this.host.release(this, code, err?.message ?? 'cancelled');
    }
    cb(err);
  }

  // ------------------------------------------------ called by the session

  /**
   * Takes up to `max` bytes of queued data that the peer has credit for.
   * Returns the bytes and the write callbacks now complete.
   */
  takeData(max: number, done: Array<(err?: Error | null) => void>): Buffer | undefined {
    const limit = Math.min(max, this.sendCredit);
    if (limit <= 0 || this.queue.length === 0) return undefined;
    const head = this.queue[0]!;
    const avail = head.buf.length - this.queueOffset;
    let out: Buffer;
    if (avail <= limit) {
      out = this.queueOffset === 0 ? head.buf : head.buf.subarray(this.queueOffset);
      this.queue.shift();
      this.queueOffset = 0;
      if (head.cb) done.push(head.cb);
      // Coalesce small following chunks into the same frame.
      if (out.length < limit && this.queue.length > 0) {
        const parts = [out];
        let size = out.length;
        while (this.queue.length > 0 && size + this.queue[0]!.buf.length <= limit) {
          const next = this.queue.shift()!;
          parts.push(next.buf);
          size += next.buf.length;
          if (next.cb) done.push(next.cb);
        }
        if (parts.length > 1) out = Buffer.concat(parts, size);
      }
    } else {
      out = head.buf.subarray(this.queueOffset, this.queueOffset + limit);
      this.queueOffset += limit;
    }
    this.sendCredit -= out.length;
    this.bytesOut += out.length;
    return out;
  }

  /** True once the queue is empty and end() was called: FIN goes next. */
  takeFin(): boolean {
    if (this.queue.length > 0 || this.finCallback === undefined || this.finSent) return false;
    this.finSent = true;
    const cb = this.finCallback;
    this.finCallback = undefined;
    process.nextTick(cb);
    return true;
  }

  onOpened(window: number): void {
    this.state = 'open';
    this.sendCredit = window;
    this.host.schedule(this);
  }

  /**
   * DATA from the peer. Throws ProtocolError for a state violation (the
   * session ends), TunnelError FLOW_CONTROL beyond the window (this stream
   * ends); anything else thrown comes from the consumer's listeners ('data'
   * runs inside push) and is this stream's failure only.
   */
  onData(data: Buffer): void {
    if (this.finReceived) throw new ProtocolError('BAD_STATE', `DATA after FIN on stream ${this.id}`);
    if (data.length > this.recvCredit) throw new TunnelError('FLOW_CONTROL', 'peer sent beyond its window');
    this.recvCredit -= data.length;
    this.bytesIn += data.length;
    this.push(unpinned(data, this.readableFlowing === true && this.readableLength === 0));
  }

  onWindow(increment: number): void {
    if (this.sendCredit + increment > MAX_WINDOW) throw new TunnelError('FLOW_CONTROL', 'window overflow');
    this.sendCredit += increment;
    if (this.queue.length > 0) this.host.schedule(this);
  }

  onFin(): void {
    if (this.finReceived) throw new ProtocolError('BAD_STATE', `second FIN on stream ${this.id}`);
    this.finReceived = true;
    this.push(null);
  }

  onReset(code: number, message: string): void {
    this.resetReceived = true;
    this.destroy(new TunnelError(reasonFromCode(code), message || Reasons[reasonFromCode(code)].text));
  }

  /** The session failed: end without sending anything. */
  abort(err: Error): void {
    this.resetReceived = true;
    this.destroy(err);
  }

  /**
   * Tops the peer's credit back up when our buffer has drained enough.
   *
   * The window grows (doubling, up to maxWindow) while the consumer drains a
   * whole window within AUTOTUNE_MS: then the window, not the reader, limits
   * the stream, and the window tracks throughput x AUTOTUNE_MS (the
   * bandwidth-delay product of a busy loopback). A slow or stalled reader
   * never drains a window that fast, so it keeps the initial window.
   */
  grant(): void {
    if (this.state === 'closed' || this.finReceived) return;
    const consumed = this.bytesIn - this.readableLength;
    if (consumed - this.consumedAtMark >= this.window) {
      const now = performance.now();
      if (now - this.markAt < AUTOTUNE_MS) this.window = Math.min(this.window * 2, this.host.maxWindow);
      this.consumedAtMark = consumed;
      this.markAt = now;
    }
    const window = this.window;
    const want = window - this.readableLength - this.recvCredit;
    // Grant in large steps (no silly window); always grant when the peer has
    // no credit at all, or nothing would ever call _read again.
    if (want > 0 && (this.recvCredit === 0 || want >= window / 4)) {
      this.recvCredit += want;
      this.host.sendWindow(this, want);
    }
  }
}
