import { randomFillSync } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { Defaults } from '../constants.js';
import { Reasons, TunnelError, reasonFromCode, type Reason } from '../errors.js';
import { FrameDecoder, ProtocolError } from '../protocol/codec.js';
import { FrameType, MAX_STREAM_ID, type Frame, type OpenRequest } from '../protocol/frame.js';
import { awaitOpen, closeWhenIdle, type PendingOpen } from './pending.js';
import { everyInterval } from './ping-clock.js';
import { Scheduler } from './scheduler.js';
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
  /**
   * PING only after a whole interval in which nothing arrived (default: for
   * the agent). The server PINGs every interval and the agent answers, so an
   * idle tunnel carries one exchange per interval, not two; an agent whose
   * server fell silent still PINGs it and finds out.
   */
  pingOnlyWhenSilent?: boolean;
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

/** The frames that name one stream of a session (all but OPEN and stream 0's own). */
type StreamFrame = Exclude<Frame, { streamId: 0 } | { type: typeof FrameType.OPEN }>;

interface Incoming {
  controller: AbortController;
  window: number;
  request: OpenRequest;
}

/** What a Session emits, with each event's arguments. */
export interface SessionEvents {
  /** The peer asks to open a stream: accept or reject it (an OPEN no listener takes is refused). */
  open: [incoming: IncomingOpen];
  /** The peer sent GOAWAY: open nothing more on this session. */
  goaway: [reason: TunnelError];
  /** The session ended; `err` says why (undefined: closed on purpose, without error). */
  close: [err: Error | undefined];
  /** A stream's consumer threw while the session delivered a frame to it: that stream was reset, the session goes on. */
  streamError: [streamId: number, err: Error];
  /** A stream ended and left the session. */
  streamClosed: [stream: MuxStream];
  /** We sent GOAWAY, and no stream is open or being opened any more. */
  idle: [];
}

/**
 * Random PING nonces, drawn from the system a block at a time: a draw per
 * PING was about a fifth of the CPU of a server idling with thousands of
 * tunnels.
 */
const nonces = new BigUint64Array(256);
let nextNonce = nonces.length;

function randomNonce(): bigint {
  if (nextNonce === nonces.length) {
    randomFillSync(nonces);
    nextNonce = 0;
  }
  return nonces[nextNonce++]!;
}

/**
 * A tunnel session: many streams over one frame transport, with per-stream
 * credit-based flow control, round-robin scheduling of DATA across streams
 * (the Scheduler), back pressure to the transport, liveness pings and
 * draining. Its events are the SessionEvents.
 *
 * Failures are kept where they belong: a peer's protocol violation
 * (ProtocolError) ends the session; a peer exceeding one stream's window
 * (FLOW_CONTROL) ends that stream; an exception from a stream's consumer ends
 * that stream. A peer that makes us hold more than a bound (control frames it
 * does not read, a PING flood, a stalled socket) is disconnected with a reason.
 *
 * Every field is private to the session and written only by the methods
 * named beside it; what others may know is read through getters.
 */
export class Session extends EventEmitter<SessionEvents> implements StreamHost {
  readonly initialWindow: number;
  readonly maxWindow: number;
  private readonly openTimeoutMs: number;
  private readonly pingTimeoutMs: number;
  private readonly maxStreams: number;
  private readonly maxPendingIncoming: number;
  private readonly maxPingsPerSecond: number;
  private readonly transport: FrameTransport;
  private readonly decoder: FrameDecoder;
  /** Everything sent goes through it. */
  private readonly scheduler: Scheduler;

  /** Streams opened or accepted and not yet released: added by open/accept, removed by release and close. */
  private readonly streams = new Map<number, MuxStream>();
  /** Our OPENs awaiting an answer: added by open (awaitOpen), removed as they settle. */
  private readonly pending = new Map<number, PendingOpen>();
  /** The peer's OPENs not yet accepted or rejected: added by onOpen, removed as they settle, by a RESET, failStream and close. */
  private readonly incoming = new Map<number, Incoming>();
  /** The id our next OPEN gets (open). */
  private nextId: number;
  /** The highest id the peer has opened (onOpen). */
  private maxRemoteId = 0;

  /** How often this session's PING timer ticks (0: never). */
  readonly pingIntervalMs: number;
  /** PING liveness: the end of this session's ticks (ping-clock.ts), the deadline, nonce and time of the PING in flight; written by ping, the PONG in dispatch, and close. */
  private stopPingTicks: () => void = () => {};
  private pingDeadline: NodeJS.Timeout | undefined;
  private pingNonce = 0n;
  private pingSentAt = 0;
  /** Whether a message arrived since the last tick of the PING timer (onMessage, the timer). */
  private heardSinceTick = false;
  /** PINGs received in the second from pingCountFrom (onPing). */
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

  /** Set once, by close. */
  private _closed = false;
  /** We sent GOAWAY (goAway). */
  private _draining = false;
  /** The peer sent GOAWAY (dispatch). */
  private _peerDraining = false;
  /** Round trip of the last PING answered (dispatch, on PONG). */
  private _rttMs: number | undefined;
  /** DATA payload bytes received (dispatch). */
  private _bytesIn = 0;

  constructor(transport: FrameTransport, options: SessionOptions) {
    super();
    this.transport = transport;
    this.initialWindow = options.initialWindow ?? Defaults.initialWindow;
    this.maxWindow = Math.max(this.initialWindow, options.maxWindow ?? Defaults.maxWindow);
    this.openTimeoutMs = options.openTimeoutMs ?? Defaults.openTimeoutMs;
    this.pingTimeoutMs = options.pingTimeoutMs ?? Defaults.pingTimeoutMs;
    this.maxStreams = options.maxStreams ?? Defaults.maxStreamsPerSession;
    this.maxPendingIncoming = options.maxPendingIncoming ?? Defaults.maxPendingIncoming;
    this.maxPingsPerSecond = options.maxPingsPerSecond ?? Defaults.maxPingsPerSecond;
    this.nextId = options.role === 'server' ? 1 : 2;
    const maxFrameSize = options.maxFrameSize ?? Defaults.maxFrameSize;
    // Control frames (OPEN with identity) may exceed a DATA frame.
    this.decoder = new FrameDecoder({ maxPayload: Math.max(maxFrameSize, 64 * 1024) });
    this.scheduler = new Scheduler(
      transport,
      {
        maxFrameSize,
        maxMessageSize: options.maxMessageSize ?? Defaults.maxMessageSize,
        highWater: options.transportHighWater ?? Defaults.transportHighWater,
        maxControlFrames: options.maxControlFrames ?? Defaults.maxControlFrames,
        maxControlBytes: options.maxControlBytes ?? Defaults.maxControlBytes,
        sendStallTimeoutMs: options.sendStallTimeoutMs ?? Defaults.sendStallTimeoutMs,
      },
      (err) => this.close(err),
    );

    transport.on('message', this.onMessage);
    transport.on('close', this.onTransportClose);

    this.pingIntervalMs = options.pingIntervalMs ?? Defaults.pingIntervalMs;
    if (this.pingIntervalMs > 0) {
      const onlyWhenSilent = options.pingOnlyWhenSilent ?? options.role === 'agent';
      this.stopPingTicks = everyInterval(this.pingIntervalMs, () => {
        const heard = this.heardSinceTick;
        this.heardSinceTick = false;
        if (!(onlyWhenSilent && heard)) this.ping();
      });
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
    return !this._closed && !this._draining && !this._peerDraining && this.nextId <= MAX_STREAM_ID;
  }

  /** Ended: no stream is open or will be. */
  get closed(): boolean {
    return this._closed;
  }

  /** We sent GOAWAY: the peer should open nothing more. */
  get draining(): boolean {
    return this._draining;
  }

  /** The peer sent GOAWAY: open nothing more on it. */
  get peerDraining(): boolean {
    return this._peerDraining;
  }

  /** Round trip of the last PING answered, in ms; undefined before the first. */
  get rttMs(): number | undefined {
    return this._rttMs;
  }

  /** DATA payload bytes received. */
  get bytesIn(): number {
    return this._bytesIn;
  }

  /** DATA payload bytes sent. */
  get bytesOut(): number {
    return this.scheduler.bytesOut;
  }

  /** Bytes handed to the transport whose send has not completed. */
  get outstanding(): number {
    return this.scheduler.outstanding;
  }

  // ------------------------------------------------------------ opening

  open(request: OpenRequest, options: OpenOptions = {}): Promise<MuxStream> {
    if (this._closed) return Promise.reject(new TunnelError('SESSION_CLOSED'));
    if (this._draining || this._peerDraining) return Promise.reject(new TunnelError('GOING_AWAY'));
    if (this.streams.size >= this.maxStreams) return Promise.reject(new TunnelError('TOO_MANY_STREAMS'));
    if (this.nextId > MAX_STREAM_ID) {
      this.goAway('GOING_AWAY', 'stream ids exhausted');
      return Promise.reject(new TunnelError('GOING_AWAY', 'stream ids exhausted'));
    }
    if (options.signal?.aborted) return Promise.reject(new TunnelError('CANCELLED'));
    const id = this.nextId;
    this.nextId += 2;
    const stream = new MuxStream(this, id, request, this.initialWindow);
    this.streams.set(id, stream);
    this.sendControl({ type: FrameType.OPEN, streamId: id, window: this.initialWindow, request });
    if (this._closed) return Promise.reject(new TunnelError('SESSION_CLOSED'));

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
    if (this._draining) return refuse('GOING_AWAY', 'session is draining');
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
        if (!settle() || this._closed) throw new TunnelError('CANCELLED', 'the opener went away');
        const stream = new MuxStream(this, id, frame.request, this.initialWindow);
        this.streams.set(id, stream);
        this.sendControl({ type: FrameType.OPEN_OK, streamId: id, window: this.initialWindow });
        stream.onOpened(entry.window);
        return stream;
      },
      reject: (reason, message) => {
        if (settle() && !this._closed) refuse(reason, message ?? Reasons[reason].text);
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
    if (this._closed) return;
    this.heardSinceTick = true;
    let frames: Frame[];
    try {
      frames = this.decoder.push(message);
      if (this.decoder.pending > 0) throw new ProtocolError('TRUNCATED', 'message ended inside a frame');
    } catch (err) {
      this.close(err as Error);
      return;
    }
    for (const frame of frames) {
      if (this._closed) return;
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

  /** One frame from the peer: the session's own (stream id 0, and OPEN), or a stream's. */
  private dispatch(frame: Frame): void {
    switch (frame.type) {
      case FrameType.PING:
        this.onPing(frame.payload);
        return;
      case FrameType.PONG:
        this.onPong(frame.payload);
        return;
      case FrameType.GOAWAY:
        if (!this._peerDraining) {
          this._peerDraining = true;
          this.emit('goaway', new TunnelError(reasonFromCode(frame.code), frame.message));
        }
        return;
      case FrameType.OPEN:
        this.onOpen(frame);
        return;
      default:
        this.onStreamFrame(frame);
    }
  }

  /** A frame for one stream: an OPEN not yet answered, a live stream, or one that has ended here. */
  private onStreamFrame(frame: StreamFrame): void {
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
    this.deliver(stream, frame);
  }

  /** A frame for a stream of this session: its answer to our OPEN, or what the stream handles itself. */
  private deliver(stream: MuxStream, frame: StreamFrame): void {
    const id = stream.id;
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
        if (stream.state === 'opening') throw new ProtocolError('BAD_STREAM_ID', `DATA before OPEN_OK on ${id}`);
        this._bytesIn += frame.data.length;
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
    this.scheduler.pong(nonce);
  }

  private onPong(nonce: bigint): void {
    if (!this.pingDeadline || nonce !== this.pingNonce) return;
    this._rttMs = performance.now() - this.pingSentAt;
    clearTimeout(this.pingDeadline);
    this.pingDeadline = undefined;
    // Every frame sent before our PING has arrived: what was in flight for streams ended by then has too.
    this.lateCreditUsed = Math.max(this.lateCreditUsed, this.lateAtPing.credit);
    this.lateFramesUsed = Math.max(this.lateFramesUsed, this.lateAtPing.frames);
  }

  /** True if `id` was opened on this session at some point. */
  private wasUsed(id: number): boolean {
    return id % 2 === this.nextId % 2 ? id < this.nextId : id <= this.maxRemoteId;
  }

  // ------------------------------------------------------------ sending

  private sendControl(frame: Frame): void {
    this.scheduler.queueControl(frame);
  }

  /** StreamHost: the stream has DATA or FIN to send. */
  schedule(stream: MuxStream): void {
    this.scheduler.schedule(stream);
  }

  /** StreamHost: grant receive window (added to a WINDOW for the stream still queued, if any). */
  sendWindow(stream: MuxStream, increment: number): void {
    this.scheduler.window(stream.id, increment);
  }

  /** StreamHost: a stream was destroyed. */
  release(stream: MuxStream, resetCode: number | undefined, message: string): void {
    if (this.streams.get(stream.id) !== stream) return;
    this.streams.delete(stream.id);
    if (stream.state !== 'reset') {
      // The peer may not know yet: what it had credit for (none after its FIN) may still arrive.
      this.lateCreditGranted += stream.recvCredit;
      this.lateFramesGranted += Defaults.lateFramesPerClosedStream;
    }
    if (resetCode !== undefined)
      this.sendControl({ type: FrameType.RESET, streamId: stream.id, code: resetCode, message });
    this.emit('streamClosed', stream);
    if (this._draining && this.streams.size === 0 && this.incoming.size === 0) this.emit('idle');
  }

  // ------------------------------------------------------------ liveness

  private ping(): void {
    if (this._closed || this.pingDeadline) return;
    // Random: a peer cannot answer a PING it has not received.
    this.pingNonce = randomNonce();
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
    if (this._draining || this._closed) return;
    this._draining = true;
    this.sendControl({ type: FrameType.GOAWAY, streamId: 0, code: Reasons[reason].code, message });
  }

  /** GOAWAY, then close once every stream has ended or the grace period is over. */
  drain(graceMs: number): Promise<void> {
    this.goAway();
    if (this._closed) return Promise.resolve();
    return closeWhenIdle(this, this.streams.size === 0 && this.incoming.size === 0, graceMs);
  }

  private readonly onTransportClose = (err?: Error): void => {
    this.close(err && !(err instanceof TunnelError) ? new TunnelError('SESSION_CLOSED', err.message) : err);
  };

  /** Ends the session: every stream and pending open fails with `err`. */
  close(err?: Error): void {
    if (this._closed) return;
    // Let queued frames (a final GOAWAY, RESETs) go out before the close frame.
    this.scheduler.flushControl();
    this._closed = true;
    this.scheduler.stop();
    this.stopPingTicks();
    clearTimeout(this.pingDeadline);
    this.pingDeadline = undefined;
    const failure = err instanceof TunnelError ? err : new TunnelError('SESSION_CLOSED', err?.message);
    for (const p of [...this.pending.values()]) p.reject(failure);
    for (const entry of this.incoming.values()) entry.controller.abort(failure);
    this.incoming.clear();
    for (const s of [...this.streams.values()]) s.abort(failure);
    this.streams.clear();
    this.transport.off('message', this.onMessage);
    const reason = err instanceof TunnelError ? err.reason : err ? 'SESSION_CLOSED' : undefined;
    this.transport.close(reason ? Reasons[reason].ws : 1000, err?.message ?? 'closed');
    this.emit('close', err);
  }
}
