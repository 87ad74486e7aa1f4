import { Duplex } from 'node:stream';
import { TunnelError, reasonFromCode, Reasons } from '../errors.js';
import { ProtocolError } from '../protocol/codec.js';
import { MAX_WINDOW, type OpenRequest } from '../protocol/frame.js';

/** What a stream needs from its session: scheduling and frames out. */
export interface StreamHost {
  readonly initialWindow: number;
  /** The most a stream's window may grow to. */
  readonly maxWindow: number;
  /** The stream has DATA or FIN to send. */
  schedule(stream: MuxStream): void;
  /** Grant `increment` more bytes of receive window to the peer (an unmetered stream: 0 on every read, its reader drained). */
  sendWindow(stream: MuxStream, increment: number): void;
  /**
   * The stream is gone (called once, from destroy, after the stream reached
   * 'closed' or 'reset'); RESET the peer with `code` unless it is undefined.
   */
  release(stream: MuxStream, resetCode: number | undefined, message: string): void;
}

/**
 * Where a stream is in its life (as yamux's streamState; ws's readyState).
 *
 *   opening ─OPEN_OK─▶ open ─FIN sent─────▶ localClosed ─FIN received─▶ closed
 *      │                 └──FIN received─▶ remoteClosed ─FIN sent─────▶ closed
 *      └─FIN received (before OPEN_OK)─▶ remoteClosed
 *
 * From any state but 'reset': RESET received, or the session under it ended,
 * leads to 'reset' (the peer sends nothing more, nothing is sent back); the
 * stream destroyed here leads to 'closed' (with a RESET to the peer unless
 * FIN went both ways). A stream this side accepts goes from 'opening' to
 * 'open' as it is created.
 */
export type StreamState = 'opening' | 'open' | 'localClosed' | 'remoteClosed' | 'closed' | 'reset';

/** What moves a stream from one state to the next. */
type StreamEvent = 'OPEN_OK' | 'FIN_SENT' | 'FIN_RECEIVED' | 'RESET' | 'DESTROYED';

/**
 * Every transition there is. An event a state has no entry for throws a
 * ProtocolError: from the peer (OPEN_OK twice) it ends the session; this
 * side's own events (FIN_SENT) never reach such an entry.
 */
const NEXT: { readonly [S in StreamState]: { readonly [E in StreamEvent]?: StreamState } } = {
  opening: { OPEN_OK: 'open', FIN_RECEIVED: 'remoteClosed', RESET: 'reset', DESTROYED: 'closed' },
  open: { FIN_SENT: 'localClosed', FIN_RECEIVED: 'remoteClosed', RESET: 'reset', DESTROYED: 'closed' },
  localClosed: { FIN_RECEIVED: 'closed', RESET: 'reset', DESTROYED: 'closed' },
  remoteClosed: { OPEN_OK: 'remoteClosed', FIN_SENT: 'closed', RESET: 'reset', DESTROYED: 'closed' },
  closed: { RESET: 'reset', DESTROYED: 'closed' },
  reset: { RESET: 'reset', DESTROYED: 'reset' },
};

/**
 * A window drained this fast (ms) is too small: it doubles. Small, so a fast
 * stream never has more than a few ms of data queued ahead of its neighbours.
 */
const AUTOTUNE_MS = 4;

/** A payload that is at least 1/PIN_RATIO of the memory it views is kept as is. */
const PIN_RATIO = 2;

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

interface Pending {
  buf: Buffer;
  cb: ((err?: Error | null) => void) | undefined;
}

/**
 * One stream of a session: a Node Duplex whose writes are framed as DATA
 * under the peer's credit, and whose reads grant credit back as they drain.
 *
 * Receive side: the peer may send `recvCredit` more bytes; grant() tops that
 * up to `window` minus what is buffered unread here, so buffered bytes plus
 * the peer's credit stay within the current window (which only grows, up to
 * the host's maxWindow).
 *
 * The host (the session) drives the stream through the methods below
 * `called by the host`; it never writes a field of the stream. Who writes
 * each field is said beside it.
 */
export class MuxStream extends Duplex {
  readonly id: number;
  readonly request: OpenRequest;

  /** Written only by to(). */
  private _state: StreamState = 'opening';
  /** Bytes the peer lets us send. Added to by onOpened/onWindow (peer's frames); spent by takeData. */
  private _sendCredit = 0;
  /** Bytes the peer may still send. Set by the constructor; added to by grant; spent by onData; zeroed by onFin. */
  private _recvCredit: number;
  /** Bytes received (onData). */
  private _bytesIn = 0;
  /** Bytes framed for sending (takeData). */
  private _bytesOut = 0;
  /** Receive window: starts at the host's initial window, grown by grant for fast readers. */
  private _window: number;
  /** The peer's credit is neither checked nor spent either way (constructor): the host's transport has flow control of its own. */
  private readonly unmetered: boolean;
  /** Autotuning marks, written by grant. */
  private consumedAtMark = 0;
  private markAt = performance.now();

  private readonly host: StreamHost;
  /** Writes not yet framed: added by _write/_writev, taken by takeData, failed by _destroy. */
  private queue: Pending[] = [];
  private queueOffset = 0;
  /** end()'s callback while FIN waits behind queued data: set by _final, called by takeFin, failed by _destroy. */
  private finCallback: ((err?: Error | null) => void) | undefined;

  /**
   * `credit`: the receive window granted to the peer in our OPEN or OPEN_OK,
   * or 'unmetered' for a host whose transport carries no per-stream credit.
   */
  constructor(host: StreamHost, id: number, request: OpenRequest, credit: number | 'unmetered') {
    super({
      allowHalfOpen: true,
      readableHighWaterMark: host.initialWindow / 2,
      writableHighWaterMark: 64 * 1024,
    });
    this.host = host;
    this.id = id;
    this.request = request;
    this._window = host.initialWindow;
    this.unmetered = credit === 'unmetered';
    this._recvCredit = credit === 'unmetered' ? 0 : credit;
    // A stream's failure is reported to whoever consumes it (pipeline, their
    // own 'error' listener); it must never crash the process on its own.
    this.on('error', () => {});
  }

  get state(): StreamState {
    return this._state;
  }

  /** Bytes the peer lets us send now. */
  get sendCredit(): number {
    return this._sendCredit;
  }

  /** Bytes the peer may still send us. */
  get recvCredit(): number {
    return this._recvCredit;
  }

  get bytesIn(): number {
    return this._bytesIn;
  }

  get bytesOut(): number {
    return this._bytesOut;
  }

  /** The current receive window (see grant). */
  get window(): number {
    return this._window;
  }

  /** True when the scheduler has something to send for this stream now. */
  get sendable(): boolean {
    // Only an open sending side frames anything (not before OPEN_OK, after FIN sent, or once ended).
    if (this._state !== 'open' && this._state !== 'remoteClosed') return false;
    if (this.queue.length > 0) return this._sendCredit > 0 || this.unmetered;
    return this.finCallback !== undefined;
  }

  /** The one place the state changes. */
  private to(event: StreamEvent): void {
    const next = NEXT[this._state][event];
    if (next === undefined) throw new ProtocolError('BAD_STATE', `${event} on stream ${this.id} in state ${this._state}`);
    this._state = next;
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
    // Nothing to tell the peer after FIN both ways or a RESET from it.
    const told = this._state === 'closed' || this._state === 'reset';
    this.to('DESTROYED');
    const code = told ? undefined : Reasons[err instanceof TunnelError ? err.reason : 'CANCELLED'].code;
    this.host.release(this, code, err?.message ?? 'cancelled');
    cb(err);
  }

  // ------------------------------------------------ called by the host

  /**
   * Takes up to `max` bytes of queued data that the peer has credit for.
   * Returns the bytes and the write callbacks now complete.
   */
  takeData(max: number, done: Array<(err?: Error | null) => void>): Buffer | undefined {
    const limit = this.unmetered ? max : Math.min(max, this._sendCredit);
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
    if (!this.unmetered) this._sendCredit -= out.length;
    this._bytesOut += out.length;
    return out;
  }

  /** True once the queue is empty and end() was called: FIN goes next. */
  takeFin(): boolean {
    if (this.queue.length > 0 || this.finCallback === undefined) return false;
    this.to('FIN_SENT');
    const cb = this.finCallback;
    this.finCallback = undefined;
    process.nextTick(cb);
    return true;
  }

  /** The peer accepted the stream (OPEN_OK), or this side did: the peer's window is `window`. */
  onOpened(window: number): void {
    this.to('OPEN_OK');
    this._sendCredit = window;
    this.host.schedule(this);
  }

  /**
   * DATA from the peer. Throws ProtocolError for a state violation (the
   * session ends), TunnelError FLOW_CONTROL beyond the window (this stream
   * ends); anything else thrown comes from the consumer's listeners ('data'
   * runs inside push) and is this stream's failure only.
   */
  onData(data: Buffer): void {
    if (this._state === 'remoteClosed' || this._state === 'closed') throw new ProtocolError('BAD_STATE', `DATA after FIN on stream ${this.id}`);
    if (!this.unmetered) {
      if (data.length > this._recvCredit) throw new TunnelError('FLOW_CONTROL', 'peer sent beyond its window');
      this._recvCredit -= data.length;
    }
    this._bytesIn += data.length;
    this.push(unpinned(data, this.readableFlowing === true && this.readableLength === 0));
  }

  onWindow(increment: number): void {
    if (this._sendCredit + increment > MAX_WINDOW) throw new TunnelError('FLOW_CONTROL', 'window overflow');
    this._sendCredit += increment;
    if (this.queue.length > 0) this.host.schedule(this);
  }

  onFin(): void {
    if (this._state === 'remoteClosed' || this._state === 'closed') throw new ProtocolError('BAD_STATE', `second FIN on stream ${this.id}`);
    this.to('FIN_RECEIVED');
    // The peer sends no more: the credit it held is void.
    this._recvCredit = 0;
    this.push(null);
  }

  onReset(code: number, message: string): void {
    this.to('RESET');
    this.destroy(new TunnelError(reasonFromCode(code), message || Reasons[reasonFromCode(code)].text));
  }

  /** The session failed: end without sending anything. */
  abort(err: Error): void {
    this.to('RESET');
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
  private grant(): void {
    if (this._state !== 'opening' && this._state !== 'open' && this._state !== 'localClosed') return;
    // No credit to keep (the transport has its own flow control): every read
    // tells the host, which resumes a transport it paused for this reader.
    if (this.unmetered) return this.host.sendWindow(this, 0);
    const consumed = this._bytesIn - this.readableLength;
    if (consumed - this.consumedAtMark >= this._window) {
      const now = performance.now();
      if (now - this.markAt < AUTOTUNE_MS) this._window = Math.min(this._window * 2, this.host.maxWindow);
      this.consumedAtMark = consumed;
      this.markAt = now;
    }
    const window = this._window;
    const want = window - this.readableLength - this._recvCredit;
    // Grant in large steps (no silly window); always grant when the peer has
    // no credit at all, or nothing would ever call _read again.
    if (want > 0 && (this._recvCredit === 0 || want >= window / 4)) {
      this._recvCredit += want;
      this.host.sendWindow(this, want);
    }
  }
}
