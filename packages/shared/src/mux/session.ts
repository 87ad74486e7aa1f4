import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { Defaults } from '../constants.js';
import { Reasons, TunnelError, reasonFromCode, type Reason } from '../errors.js';
import { FrameDecoder, ProtocolError, encodeFrame, writeHeader } from '../protocol/codec.js';
import { FrameType, HEADER_SIZE, MAX_STREAM_ID, MAX_WINDOW, type Frame, type OpenRequest } from '../protocol/frame.js';
import { awaitOpen, closeWhenIdle, type PendingOpen } from './pending.js';
import { poolFor, type BufferPool } from './pool.js';
import { MuxStream, type StreamHost } from './stream.js';
import type { FrameTransport } from './transport.js';

export interface SessionOptions {
  /** The server opens odd stream ids, the agent even ones. */
  role: 'server' | 'agent';
  initialWindow?: number;
  /** How far a fast stream's window may grow (autotuning); = initialWindow turns it off. */
  maxWindow?: number;
  maxFrameSize?: number;
  maxMessageSize?: number;
  transportHighWater?: number;
  openTimeoutMs?: number;
  /** 0 turns liveness checks off. */
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
  maxStreams?: number;
  maxPendingIncoming?: number;
  maxControlFrames?: number;
  maxControlBytes?: number;
  maxPingsPerSecond?: number;
  sendStallTimeoutMs?: number;
}

/** An OPEN from the peer, waiting to be accepted or rejected. */
export interface IncomingOpen {
  readonly streamId: number;
  readonly request: OpenRequest;
  /** Aborted when the opener gives up or the session ends. */
  readonly signal: AbortSignal;
  accept(): MuxStream;
  reject(reason: Reason, message?: string): void;
}

export interface OpenOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

interface Incoming {
  controller: AbortController;
  window: number;
  request: OpenRequest;
}

/**
 * A tunnel session: many streams over one frame transport, with per-stream
 * credit-based flow control, round-robin scheduling of DATA across streams,
 * back pressure to the transport, liveness pings and draining.
 *
 * Events: 'open' (IncomingOpen), 'goaway' (TunnelError), 'close' (Error | undefined),
 * 'streamError' (streamId, Error): a stream's consumer threw while the session
 * delivered a frame to it; that stream was reset, the session goes on.
 *
 * Failures are kept where they belong: a peer's protocol violation
 * (ProtocolError) ends the session; a peer exceeding one stream's window
 * (FLOW_CONTROL) ends that stream; an exception from a stream's consumer ends
 * that stream. A peer that makes us hold more than a bound (control frames it
 * does not read, a PING flood, a stalled socket) is disconnected with a reason.
 */
export class Session extends EventEmitter implements StreamHost {
  readonly initialWindow: number;
  readonly maxWindow: number;
  private readonly maxFrameSize: number;
  private readonly maxMessageSize: number;
  private readonly highWater: number;
  private readonly openTimeoutMs: number;
  private readonly pingTimeoutMs: number;
  private readonly maxStreams: number;
  private readonly maxPendingIncoming: number;
  private readonly maxControlFrames: number;
  private readonly maxControlBytes: number;
  private readonly maxPingsPerSecond: number;
  private readonly sendStallTimeoutMs: number;
  private readonly transport: FrameTransport;
  private readonly decoder: FrameDecoder;
  /** Buffers messages are assembled in (a message may overrun maxMessageSize by one frame). */
  private readonly pool: BufferPool;

  private readonly streams = new Map<number, MuxStream>();
  private readonly pending = new Map<number, PendingOpen>();
  private readonly incoming = new Map<number, Incoming>();
  private nextId: number;
  private maxRemoteId = 0;

  /** Encoded control frames, sent before any DATA. */
  private control: Buffer[] = [];
  private controlBytes = 0;
  /** The queued PONG (only the latest PING needs an answer). */
  private queuedPong: Buffer | undefined;
  /** Queued WINDOW frames by stream: a new grant adds to the queued one. */
  private readonly queuedWindows = new Map<number, Buffer>();
  private ready: MuxStream[] = [];
  private readonly inReady = new WeakSet<MuxStream>();
  /** Bytes handed to the transport whose send has not completed. */
  outstanding = 0;
  /** When a send last completed (or the transport last went from idle to busy). */
  private lastSendProgress = 0;
  private stallTimer: NodeJS.Timeout | undefined;
  private flushQueued = false;
  private flushing = false;
  private immediate: NodeJS.Immediate | undefined;

  private pingTimer: NodeJS.Timeout | undefined;
  private pingDeadline: NodeJS.Timeout | undefined;
  private pingNonce = 0n;
  private pingSentAt = 0;
  private pingsReceived = 0;
  private pingCountFrom = 0;

  /*
   * Frames still in flight from the peer for streams that have ended here.
   * Each ended stream entitles the peer to the DATA credit it held at that
   * moment and a few other frames; beyond that, frames for ended streams are
   * a protocol violation. A PONG to a PING queued after a stream ended proves
   * every frame the peer sent for it has arrived, so the entitlements up to
   * that PING expire then.
   */
  private lateCreditGranted = 0;
  private lateCreditUsed = 0;
  private lateFramesGranted = 0;
  private lateFramesUsed = 0;
  private lateAtPing = { credit: 0, frames: 0 };

  closed = false;
  /** We sent GOAWAY: the peer should open nothing more. */
  draining = false;
  /** The peer sent GOAWAY: open nothing more on it. */
  peerDraining = false;
  rttMs: number | undefined;
  bytesIn = 0;
  bytesOut = 0;

  constructor(transport: FrameTransport, options: SessionOptions) {
    super();
    this.transport = transport;
    this.initialWindow = options.initialWindow ?? Defaults.initialWindow;
    this.maxWindow = Math.max(this.initialWindow, options.maxWindow ?? Defaults.maxWindow);
    this.maxFrameSize = options.maxFrameSize ?? Defaults.maxFrameSize;
    this.maxMessageSize = options.maxMessageSize ?? Defaults.maxMessageSize;
    this.highWater = options.transportHighWater ?? Defaults.transportHighWater;
    this.openTimeoutMs = options.openTimeoutMs ?? Defaults.openTimeoutMs;
    this.pingTimeoutMs = options.pingTimeoutMs ?? Defaults.pingTimeoutMs;
    this.maxStreams = options.maxStreams ?? Defaults.maxStreamsPerSession;
    this.maxPendingIncoming = options.maxPendingIncoming ?? Defaults.maxPendingIncoming;
    this.maxControlFrames = options.maxControlFrames ?? Defaults.maxControlFrames;
    this.maxControlBytes = options.maxControlBytes ?? Defaults.maxControlBytes;
    this.maxPingsPerSecond = options.maxPingsPerSecond ?? Defaults.maxPingsPerSecond;
    this.sendStallTimeoutMs = options.sendStallTimeoutMs ?? Defaults.sendStallTimeoutMs;
    this.nextId = options.role === 'server' ? 1 : 2;
    // Control frames (OPEN with identity) may exceed a DATA frame.
    this.decoder = new FrameDecoder({ maxPayload: Math.max(this.maxFrameSize, 64 * 1024) });
    this.pool = poolFor(this.maxMessageSize + this.maxFrameSize + 2 * HEADER_SIZE);

    transport.on('message', this.onMessage);
    transport.on('close', this.onTransportClose);

    const pingInterval = options.pingIntervalMs ?? Defaults.pingIntervalMs;
    if (pingInterval > 0) {
      this.pingTimer = setInterval(() => this.ping(), pingInterval);
      this.ping();
    }
  }

  /** Streams that are open (OPEN_OK seen or sent). */
  get openStreams(): number {
    return this.streams.size - this.pending.size;
  }

  /** OPENs sent that have no answer yet. */
  get pendingOpens(): number {
    return this.pending.size;
  }

  /** OPENs received that are not accepted or rejected yet. */
  get pendingIncoming(): number {
    return this.incoming.size;
  }

  /** True when a new stream may be opened on this session. */
  get usable(): boolean {
    return !this.closed && !this.draining && !this.peerDraining && this.nextId <= MAX_STREAM_ID;
  }

  // ------------------------------------------------------------ opening

  open(request: OpenRequest, options: OpenOptions = {}): Promise<MuxStream> {
    if (this.closed) return Promise.reject(new TunnelError('SESSION_CLOSED'));
    if (this.draining || this.peerDraining) return Promise.reject(new TunnelError('GOING_AWAY'));
    if (this.streams.size >= this.maxStreams) return Promise.reject(new TunnelError('TOO_MANY_STREAMS'));
    if (this.nextId > MAX_STREAM_ID) {
      this.goAway('GOING_AWAY', 'stream ids exhausted');
      return Promise.reject(new TunnelError('GOING_AWAY', 'stream ids exhausted'));
    }
    if (options.signal?.aborted) return Promise.reject(new TunnelError('CANCELLED'));
    const id = this.nextId;
    this.nextId += 2;
    const stream = new MuxStream(this, id, request);
    stream.recvCredit = this.initialWindow;
    this.streams.set(id, stream);
    this.sendControl({ type: FrameType.OPEN, streamId: id, window: this.initialWindow, request });
    if (this.closed) return Promise.reject(new TunnelError('SESSION_CLOSED'));

    return awaitOpen(this.pending, id, stream, {
      timeoutMs: options.timeoutMs ?? this.openTimeoutMs,
      ...(options.signal ? { signal: options.signal } : {}),
      request: 'OPEN',
      abandon: (err) => stream.destroy(err), // sends RESET so the peer abandons its dial
    });
  }

  private onOpen(frame: Extract<Frame, { type: typeof FrameType.OPEN }>): void {
    const id = frame.streamId;
    if (id % 2 === this.nextId % 2 || id <= this.maxRemoteId)
      throw new ProtocolError('BAD_STREAM_ID', `peer opened stream ${id} out of order`);
    this.maxRemoteId = id;
    const refuse = (reason: Reason, message: string) => this.refuseOpen(id, Reasons[reason].code, message);
    if (this.draining) return refuse('GOING_AWAY', 'session is draining');
    if (this.streams.size + this.incoming.size >= this.maxStreams) return refuse('TOO_MANY_STREAMS', 'stream limit reached');
    if (this.incoming.size >= this.maxPendingIncoming) return refuse('TOO_MANY_STREAMS', 'too many opens in progress');
    if (this.listenerCount('open') === 0) return refuse('INTERNAL', 'this side accepts no streams');

    const entry: Incoming = { controller: new AbortController(), window: frame.window, request: frame.request };
    this.incoming.set(id, entry);
    const settle = (): boolean => {
      if (this.incoming.get(id) !== entry) return false;
      this.incoming.delete(id);
      return true;
    };
    const incoming: IncomingOpen = {
      streamId: id,
      request: frame.request,
      signal: entry.controller.signal,
      accept: () => {
        if (!settle() || this.closed) throw new TunnelError('CANCELLED', 'the opener went away');
        const stream = new MuxStream(this, id, frame.request);
        stream.recvCredit = this.initialWindow;
        this.streams.set(id, stream);
        this.sendControl({ type: FrameType.OPEN_OK, streamId: id, window: this.initialWindow });
        stream.onOpened(entry.window);
        return stream;
      },
      reject: (reason, message) => {
        if (settle() && !this.closed) refuse(reason, message ?? Reasons[reason].text);
      },
    };
    this.emit('open', incoming);
  }

  /** Answers an OPEN with OPEN_ERR. A RESET from the opener may be in flight (it gave up meanwhile). */
  private refuseOpen(id: number, code: number, message: string): void {
    this.lateFramesGranted += Defaults.lateFramesPerClosedStream;
    this.sendControl({ type: FrameType.OPEN_ERR, streamId: id, code, message });
  }

  // ------------------------------------------------------------ receiving

  private readonly onMessage = (message: Buffer): void => {
    if (this.closed) return;
    let frames: Frame[];
    try {
      frames = this.decoder.push(message);
      if (this.decoder.pending > 0) throw new ProtocolError('TRUNCATED', 'message ended inside a frame');
    } catch (err) {
      this.close(err as Error);
      return;
    }
    for (const frame of frames) {
      if (this.closed) return;
      try {
        this.dispatch(frame);
      } catch (err) {
        if (err instanceof ProtocolError) {
          // The peer broke the protocol: nothing it sends can be trusted now.
          this.close(err);
          return;
        }
        this.failStream(frame.streamId, err);
      }
    }
  };

  /**
   * One stream failed while a frame was delivered to it: the peer exceeded
   * its window (FLOW_CONTROL), or the stream's consumer threw (a 'data' or
   * 'open' listener). That stream is reset (refused, if its OPEN was not yet
   * accepted); the session and every other stream go on.
   */
  private failStream(id: number, err: unknown): void {
    const failure =
      err instanceof TunnelError && err.reason === 'FLOW_CONTROL'
        ? err
        : new TunnelError('INTERNAL', `stream ${id} failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    if (failure.reason !== 'FLOW_CONTROL') this.emit('streamError', id, err instanceof Error ? err : failure);
    const entry = this.incoming.get(id);
    if (entry) {
      this.incoming.delete(id);
      entry.controller.abort(failure);
      this.refuseOpen(id, failure.code, failure.message);
      return;
    }
    this.streams.get(id)?.destroy(failure);
  }

  private dispatch(frame: Frame): void {
    switch (frame.type) {
      case FrameType.PING:
        this.onPing(frame.payload);
        return;
      case FrameType.PONG:
        if (this.pingDeadline && frame.payload === this.pingNonce) {
          this.rttMs = performance.now() - this.pingSentAt;
          clearTimeout(this.pingDeadline);
          this.pingDeadline = undefined;
          // Every frame sent before our PING has arrived: what was in flight for streams ended by then has too.
          this.lateCreditUsed = Math.max(this.lateCreditUsed, this.lateAtPing.credit);
          this.lateFramesUsed = Math.max(this.lateFramesUsed, this.lateAtPing.frames);
        }
        return;
      case FrameType.GOAWAY:
        if (!this.peerDraining) {
          this.peerDraining = true;
          this.emit('goaway', new TunnelError(reasonFromCode(frame.code), frame.message));
        }
        return;
      case FrameType.OPEN:
        this.onOpen(frame);
        return;
    }

    const id = frame.streamId;
    const entry = this.incoming.get(id);
    if (entry) {
      // Only a RESET may follow an OPEN we have not answered yet.
      if (frame.type !== FrameType.RESET) throw new ProtocolError('BAD_STREAM_ID', `frame ${frame.type} before OPEN_OK`);
      this.incoming.delete(id);
      entry.controller.abort(new TunnelError(reasonFromCode(frame.code), frame.message));
      return;
    }
    const stream = this.streams.get(id);
    if (!stream) {
      if (!this.wasUsed(id)) throw new ProtocolError('BAD_STREAM_ID', `frame ${frame.type} for unknown stream ${id}`);
      this.onLateFrame(frame);
      return;
    }
    switch (frame.type) {
      case FrameType.OPEN_OK: {
        const p = this.pending.get(id);
        if (!p) throw new ProtocolError('BAD_STREAM_ID', `unexpected OPEN_OK for stream ${id}`);
        stream.onOpened(frame.window);
        p.resolve(stream);
        return;
      }
      case FrameType.OPEN_ERR: {
        const p = this.pending.get(id);
        if (!p) throw new ProtocolError('BAD_STREAM_ID', `unexpected OPEN_ERR for stream ${id}`);
        p.reject(new TunnelError(reasonFromCode(frame.code), frame.message || undefined));
        return;
      }
      case FrameType.DATA:
        if (stream.state !== 'open') throw new ProtocolError('BAD_STREAM_ID', `DATA before OPEN_OK on ${id}`);
        this.bytesIn += frame.data.length;
        stream.onData(frame.data);
        return;
      case FrameType.WINDOW:
        stream.onWindow(frame.increment);
        return;
      case FrameType.FIN:
        stream.onFin();
        return;
      case FrameType.RESET: {
        const p = this.pending.get(id);
        if (p) p.reject(new TunnelError(reasonFromCode(frame.code), frame.message || undefined));
        else stream.onReset(frame.code, frame.message);
        return;
      }
    }
  }

  /**
   * A frame for a stream that has ended here: in flight as it ended, the peer
   * may send what it had credit for and a few frames more; not beyond.
   */
  private onLateFrame(frame: Frame): void {
    if (frame.type === FrameType.DATA) {
      this.lateCreditUsed += frame.data.length;
      if (this.lateCreditUsed > this.lateCreditGranted)
        throw new ProtocolError('BAD_STATE', `DATA for ended stream ${frame.streamId} beyond the credit it had`);
    } else if (++this.lateFramesUsed > this.lateFramesGranted) {
      throw new ProtocolError('BAD_STATE', `too many frames for ended streams (frame ${frame.type} for ${frame.streamId})`);
    }
  }

  private onPing(nonce: bigint): void {
    const now = performance.now();
    if (now - this.pingCountFrom >= 1000) {
      this.pingCountFrom = now;
      this.pingsReceived = 0;
    }
    if (++this.pingsReceived > this.maxPingsPerSecond) {
      this.close(new TunnelError('PING_FLOOD', `more than ${this.maxPingsPerSecond} PINGs in a second`));
      return;
    }
    if (this.queuedPong) {
      // Not yet sent: answer this PING with the same frame instead.
      this.queuedPong.writeBigUInt64BE(nonce, HEADER_SIZE);
      return;
    }
    this.queuedPong = this.enqueue(encodeFrame({ type: FrameType.PONG, streamId: 0, payload: nonce }));
  }

  /** True if `id` was opened on this session at some point. */
  private wasUsed(id: number): boolean {
    return id % 2 === this.nextId % 2 ? id < this.nextId : id <= this.maxRemoteId;
  }

  // ------------------------------------------------------------ sending

  private sendControl(frame: Frame): void {
    this.enqueue(encodeFrame(frame));
  }

  /**
   * Queues an encoded control frame. The queue only grows while the peer does
   * not read (the transport is at its high-water mark); past its bound the
   * session closes rather than hold more for a peer that does not take it.
   */
  private enqueue(frame: Buffer): Buffer {
    if (this.closed) return frame;
    if (this.control.length >= this.maxControlFrames || this.controlBytes + frame.length > this.maxControlBytes) {
      this.close(
        new TunnelError('CONTROL_QUEUE_FULL', `${this.control.length} control frames (${this.controlBytes} bytes) queued for a peer that does not read them`),
      );
      return frame;
    }
    this.control.push(frame);
    this.controlBytes += frame.length;
    this.requestFlush();
    return frame;
  }

  /** StreamHost: the stream has DATA or FIN to send. */
  schedule(stream: MuxStream): void {
    if (this.closed || this.inReady.has(stream) || !stream.sendable) return;
    this.inReady.add(stream);
    this.ready.push(stream);
    this.requestFlush();
  }

  /** StreamHost: grant receive window (added to a WINDOW for the stream still queued, if any). */
  sendWindow(stream: MuxStream, increment: number): void {
    const queued = this.queuedWindows.get(stream.id);
    if (queued) {
      const total = queued.readUInt32BE(HEADER_SIZE) + increment;
      if (total <= MAX_WINDOW) {
        queued.writeUInt32BE(total, HEADER_SIZE);
        return;
      }
    }
    const frame = this.enqueue(encodeFrame({ type: FrameType.WINDOW, streamId: stream.id, increment }));
    if (!this.closed) this.queuedWindows.set(stream.id, frame);
  }

  /** StreamHost: a stream was destroyed. */
  release(stream: MuxStream, resetCode: number | undefined, message: string): void {
    if (this.streams.get(stream.id) !== stream) return;
    this.streams.delete(stream.id);
    if (!stream.resetReceived) {
      // The peer may not know yet: what it had credit for may still arrive.
      if (!stream.finReceived) this.lateCreditGranted += stream.recvCredit;
      this.lateFramesGranted += Defaults.lateFramesPerClosedStream;
    }
    if (resetCode !== undefined)
      this.sendControl({ type: FrameType.RESET, streamId: stream.id, code: resetCode, message });
    this.emit('streamClosed', stream);
    if (this.draining && this.streams.size === 0 && this.incoming.size === 0) this.emit('idle');
  }

  /**
   * Frames what is queued, soon. With nothing in flight the frames go out at
   * the end of the current callback (a small request pays no extra loop
   * turn); while the transport is busy they wait for the check phase, so the
   * writes of every socket read in this loop turn share one message.
   */
  private requestFlush(): void {
    if (this.flushQueued || this.closed) return;
    this.flushQueued = true;
    if (this.outstanding === 0) process.nextTick(this.onFlushDue);
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
    if (this.flushing || this.closed) return;
    this.flushing = true;
    try {
      while (this.outstanding < this.highWater && !this.closed) {
        if (!this.sendBatch()) break;
      }
    } finally {
      this.flushing = false;
    }
  }

  /** Frames one message: control frames first, then DATA round-robin. */
  private sendBatch(): boolean {
    const parts: Buffer[] = [];
    const done: Array<(err?: Error | null) => void> = [];
    let size = 0;
    while (this.control.length > 0 && size < this.maxMessageSize) {
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
    while (size < this.maxMessageSize && this.ready.length > 0) {
      const s = this.ready.shift()!;
      this.inReady.delete(s);
      if (s.state !== 'open' || this.streams.get(s.id) !== s) continue;
      const data = s.takeData(this.maxFrameSize, done);
      if (data) {
        const header = Buffer.allocUnsafe(HEADER_SIZE);
        writeHeader(header, 0, FrameType.DATA, s.id, data.length);
        parts.push(header, data);
        size += HEADER_SIZE + data.length;
        this.bytesOut += data.length;
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
    if (parts.length === 0) return false;
    let message = parts[0]!;
    let borrowed: Buffer | undefined;
    if (parts.length > 1 && size <= this.pool.size) {
      borrowed = this.pool.take();
      let at = 0;
      for (const part of parts) at += part.copy(borrowed, at);
      message = borrowed.subarray(0, size);
    } else if (parts.length > 1) {
      message = Buffer.concat(parts, size);
    }
    if (this.outstanding === 0) this.lastSendProgress = performance.now();
    this.outstanding += message.length;
    this.stallTimer ??= setTimeout(this.onStallCheck, this.sendStallTimeoutMs);
    this.transport.send(message, (err) => {
      if (borrowed) this.pool.give(borrowed);
      this.outstanding -= message.length;
      this.lastSendProgress = performance.now();
      if (err) this.close(new TunnelError('SESSION_CLOSED', err.message));
      else if (this.outstanding < this.highWater && (this.control.length > 0 || this.ready.length > 0)) this.flush();
    });
    for (const cb of done) cb();
    return true;
  }

  /** Ends the session if the transport has completed no send for sendStallTimeoutMs while sends are outstanding. */
  private readonly onStallCheck = (): void => {
    this.stallTimer = undefined;
    if (this.closed || this.outstanding === 0) return;
    const idle = performance.now() - this.lastSendProgress;
    if (idle >= this.sendStallTimeoutMs) {
      this.close(new TunnelError('PEER_NOT_READING', `${this.outstanding} bytes unsent for ${Math.round(idle)} ms`));
      return;
    }
    this.stallTimer = setTimeout(this.onStallCheck, this.sendStallTimeoutMs - idle);
  };

  // ------------------------------------------------------------ liveness

  private ping(): void {
    if (this.closed || this.pingDeadline) return;
    // Random: a peer cannot answer a PING it has not received.
    this.pingNonce = randomBytes(8).readBigUInt64BE(0);
    this.pingSentAt = performance.now();
    this.lateAtPing = { credit: this.lateCreditGranted, frames: this.lateFramesGranted };
    this.sendControl({ type: FrameType.PING, streamId: 0, payload: this.pingNonce });
    this.pingDeadline = setTimeout(
      () => this.close(new TunnelError('PING_TIMEOUT', `no PONG within ${this.pingTimeoutMs} ms`)),
      this.pingTimeoutMs,
    );
  }

  // ------------------------------------------------------------ ending

  /** Sends GOAWAY: the peer should open no more streams here. */
  goAway(reason: Reason = 'GOING_AWAY', message = 'draining'): void {
    if (this.draining || this.closed) return;
    this.draining = true;
    this.sendControl({ type: FrameType.GOAWAY, streamId: 0, code: Reasons[reason].code, message });
  }

  /** GOAWAY, then close once every stream has ended or the grace period is over. */
  drain(graceMs: number): Promise<void> {
    this.goAway();
    if (this.closed) return Promise.resolve();
    return closeWhenIdle(this, this.streams.size === 0 && this.incoming.size === 0, graceMs);
  }


  private readonly onTransportClose = (err?: Error): void => {
    this.close(err && !(err instanceof TunnelError) ? new TunnelError('SESSION_CLOSED', err.message) : err);
  };

  /** Ends the session: every stream and pending open fails with `err`. */
  close(err?: Error): void {
    if (this.closed) return;
    // Let queued frames (a final GOAWAY, RESETs) go out before the close frame.
    if (this.control.length > 0 && !this.flushing) this.flush();
    this.closed = true;
    clearInterval(this.pingTimer);
    clearTimeout(this.pingDeadline);
    clearTimeout(this.stallTimer);
    this.stallTimer = undefined;
    if (this.immediate) clearImmediate(this.immediate);
    this.pingDeadline = undefined;
    const failure = err instanceof TunnelError ? err : new TunnelError('SESSION_CLOSED', err?.message);
    for (const p of [...this.pending.values()]) p.reject(failure);
    for (const entry of this.incoming.values()) entry.controller.abort(failure);
    this.incoming.clear();
    for (const s of [...this.streams.values()]) s.abort(failure);
    this.streams.clear();
    this.control = [];
    this.controlBytes = 0;
    this.queuedPong = undefined;
    this.queuedWindows.clear();
    this.ready = [];
    this.transport.off('message', this.onMessage);
    const reason = err instanceof TunnelError ? err.reason : err ? 'SESSION_CLOSED' : undefined;
    this.transport.close(reason ? Reasons[reason].ws : 1000, err?.message ?? 'closed');
    this.emit('close', err);
  }
}
