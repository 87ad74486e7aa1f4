import { EventEmitter } from 'node:events';
import { Defaults } from '../constants.js';
import { Reasons, TunnelError, reasonFromCode, type Reason } from '../errors.js';
import { FrameDecoder, ProtocolError, encodeFrame, writeHeader } from '../protocol/codec.js';
import { FrameType, HEADER_SIZE, MAX_STREAM_ID, type Frame, type OpenRequest } from '../protocol/frame.js';
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

interface PendingOpen {
  stream: MuxStream;
  resolve: (s: MuxStream) => void;
  reject: (err: Error) => void;
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
 * Events: 'open' (IncomingOpen), 'goaway' (TunnelError), 'close' (Error | undefined).
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
  private readonly transport: FrameTransport;
  private readonly decoder: FrameDecoder;
  /** Buffers messages are assembled in (a message may overrun maxMessageSize by one frame). */
  private readonly pool: BufferPool;

  private readonly streams = new Map<number, MuxStream>();
  private readonly pending = new Map<number, PendingOpen>();
  private readonly incoming = new Map<number, Incoming>();
  private nextId: number;
  private maxRemoteId = 0;

  private control: Frame[] = [];
  private ready: MuxStream[] = [];
  private readonly inReady = new WeakSet<MuxStream>();
  /** Bytes handed to the transport whose send has not completed. */
  outstanding = 0;
  private flushQueued = false;
  private flushing = false;
  private immediate: NodeJS.Immediate | undefined;

  private pingTimer: NodeJS.Timeout | undefined;
  private pingDeadline: NodeJS.Timeout | undefined;
  private pingNonce = 0n;
  private pingSentAt = 0;
  private drainTimer: NodeJS.Timeout | undefined;

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

    return new Promise<MuxStream>((resolve, reject) => {
      const timer = setTimeout(
        () => fail(new TunnelError('OPEN_TIMEOUT', `no answer to OPEN within ${options.timeoutMs ?? this.openTimeoutMs} ms`)),
        options.timeoutMs ?? this.openTimeoutMs,
      );
      const onAbort = () => fail(new TunnelError('CANCELLED', 'open cancelled'));
      const cleanup = () => {
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        this.pending.delete(id);
      };
      const fail = (err: Error) => {
        cleanup();
        stream.destroy(err); // sends RESET so the peer abandons its dial
        reject(err);
      };
      options.signal?.addEventListener('abort', onAbort, { once: true });
      this.pending.set(id, {
        stream,
        resolve: (s) => {
          cleanup();
          resolve(s);
        },
        reject: (err) => {
          cleanup();
          stream.abort(err);
          reject(err);
        },
      });
    });
  }

  private onOpen(frame: Extract<Frame, { type: typeof FrameType.OPEN }>): void {
    const id = frame.streamId;
    if (id % 2 === this.nextId % 2 || id <= this.maxRemoteId)
      throw new ProtocolError('BAD_STREAM_ID', `peer opened stream ${id} out of order`);
    this.maxRemoteId = id;
    const refuse = (reason: Reason, message: string) =>
      this.sendControl({ type: FrameType.OPEN_ERR, streamId: id, code: Reasons[reason].code, message });
    if (this.draining) return refuse('GOING_AWAY', 'session is draining');
    if (this.streams.size + this.incoming.size >= this.maxStreams) return refuse('TOO_MANY_STREAMS', 'stream limit reached');
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
        if (err instanceof TunnelError && err.reason === 'FLOW_CONTROL' && frame.streamId !== 0) {
          this.streams.get(frame.streamId)?.destroy(err);
        } else {
          this.close(err instanceof TunnelError ? err : new TunnelError('PROTOCOL_ERROR', String(err)));
          return;
        }
      }
    }
  };

  private dispatch(frame: Frame): void {
    switch (frame.type) {
      case FrameType.PING:
        this.sendControl({ type: FrameType.PONG, streamId: 0, payload: frame.payload });
        return;
      case FrameType.PONG:
        if (this.pingDeadline && frame.payload === this.pingNonce) {
          this.rttMs = performance.now() - this.pingSentAt;
          clearTimeout(this.pingDeadline);
          this.pingDeadline = undefined;
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
      // Frames may still be in flight for a stream that has just ended.
      if (this.wasUsed(id)) return;
      throw new ProtocolError('BAD_STREAM_ID', `frame ${frame.type} for unknown stream ${id}`);
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

  /** True if `id` was opened on this session at some point. */
  private wasUsed(id: number): boolean {
    return id % 2 === this.nextId % 2 ? id < this.nextId : id <= this.maxRemoteId;
  }

  // ------------------------------------------------------------ sending

  private sendControl(frame: Frame): void {
    if (this.closed) return;
    this.control.push(frame);
    this.requestFlush();
  }

  /** StreamHost: the stream has DATA or FIN to send. */
  schedule(stream: MuxStream): void {
    if (this.closed || this.inReady.has(stream) || !stream.sendable) return;
    this.inReady.add(stream);
    this.ready.push(stream);
    this.requestFlush();
  }

  /** StreamHost: grant receive window. */
  sendWindow(stream: MuxStream, increment: number): void {
    this.sendControl({ type: FrameType.WINDOW, streamId: stream.id, increment });
  }

  /** StreamHost: a stream was destroyed. */
  release(stream: MuxStream, resetCode: number | undefined, message: string): void {
    if (this.streams.get(stream.id) !== stream) return;
    this.streams.delete(stream.id);
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
      const b = encodeFrame(this.control.shift()!);
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
    this.outstanding += message.length;
    this.transport.send(message, (err) => {
      if (borrowed) this.pool.give(borrowed);
      this.outstanding -= message.length;
      if (err) this.close(new TunnelError('SESSION_CLOSED', err.message));
      else if (this.outstanding < this.highWater && (this.control.length > 0 || this.ready.length > 0)) this.flush();
    });
    for (const cb of done) cb();
    return true;
  }

  // ------------------------------------------------------------ liveness

  private ping(): void {
    if (this.closed || this.pingDeadline) return;
    this.pingNonce++;
    this.pingSentAt = performance.now();
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
    return new Promise((resolve) => {
      const finish = () => {
        this.off('idle', finish);
        this.off('close', finish);
        clearTimeout(this.drainTimer);
        this.close();
        resolve();
      };
      if (this.streams.size === 0 && this.incoming.size === 0) return finish();
      this.once('idle', finish);
      this.once('close', finish);
      this.drainTimer = setTimeout(finish, graceMs);
    });
  }

  private readonly onTransportClose = (err?: Error): void => {
    this.close(err ? new TunnelError('SESSION_CLOSED', err.message) : undefined);
  };

  /** Ends the session: every stream and pending open fails with `err`. */
  close(err?: Error): void {
    if (this.closed) return;
    // Let queued frames (a final GOAWAY, RESETs) go out before the close frame.
    if (this.control.length > 0 && !this.flushing) this.flush();
    this.closed = true;
    clearInterval(this.pingTimer);
    clearTimeout(this.pingDeadline);
    clearTimeout(this.drainTimer);
    if (this.immediate) clearImmediate(this.immediate);
    this.pingDeadline = undefined;
    const failure = err instanceof TunnelError ? err : new TunnelError('SESSION_CLOSED', err?.message);
    for (const p of [...this.pending.values()]) p.reject(failure);
    for (const entry of this.incoming.values()) entry.controller.abort(failure);
    this.incoming.clear();
    for (const s of [...this.streams.values()]) s.abort(failure);
    this.streams.clear();
    this.control = [];
    this.ready = [];
    this.transport.off('message', this.onMessage);
    const reason = err instanceof TunnelError ? err.reason : err ? 'SESSION_CLOSED' : undefined;
    this.transport.close(reason ? Reasons[reason].ws : 1000, err?.message ?? 'closed');
    this.emit('close', err);
  }
}
