import { EventEmitter } from 'node:events';
import type * as grpc from '@grpc/grpc-js';
import {
  APISERVER_TARGET,
  Defaults,
  MAX_WINDOW,
  MuxStream,
  TunnelError,
  awaitOpen,
  closeWhenIdle,
  type Logger,
  type OpenOptions,
  type OpenRequest,
  type PendingOpen,
  type StreamHost,
} from '@kubetunnel/shared';
import type { AnpL7 } from './anp-l7.js';
import { packets, type Packet } from './packets.js';

/** What an ANP agent is asked to dial for the `apiserver` target: the in-cluster service, as its DNS resolves it. */
export const ANP_APISERVER_ADDRESS = 'kubernetes.default.svc:443';

/** Receive buffer per connection (bytes) past which the agent's call is paused. */
const RECEIVE_BOUND = 256 * 1024;

interface Conn {
  connectID: string;
  stream: MuxStream;
  /** The agent sent CLOSE_RSP: its end is gone, nothing more is sent to it. */
  remoteClosed: boolean;
  /** We sent CLOSE_REQ. */
  closeSent: boolean;
}

/**
 * One ANP proxy-agent's AgentService.Connect call, seen as a tunnel: it
 * opens streams (DIAL_REQ / DIAL_RSP) that are real MuxStreams, so the
 * frontends use them as any other tunnel's.
 *
 * The protocol has no per-connection window: bytes to the agent go as DATA
 * packets while the call accepts them (HTTP/2 flow control holds the whole
 * call); bytes from the agent are pushed into the connection's stream, and
 * when one stream holds more than RECEIVE_BOUND unread the call is paused
 * until it drains. So a slow reader holds up this agent's call (as it does
 * in ANP's own server), never more than the bound per connection, and never
 * another tunnel.
 *
 * Events: 'goaway' (the agent sent DRAIN), 'close' (Error | undefined).
 */
export class AnpSession extends EventEmitter implements StreamHost {
  readonly initialWindow = RECEIVE_BOUND;
  readonly maxWindow = RECEIVE_BOUND;
  private readonly pending = new Map<string, PendingOpen>();
  private readonly conns = new Map<string, Conn>();
  private readonly byStream = new Map<MuxStream, Conn>();
  private readonly ready = new Set<MuxStream>();
  private nextRandom = BigInt(Date.now()) << 16n;
  private nextStreamId = 1;
  private callPaused = false;
  private writable = true;

  closed = false;
  /** We are closing: no new streams. */
  draining = false;
  /** The agent sent DRAIN: no new streams. */
  peerDraining = false;
  readonly rttMs: number | undefined = undefined;
  /** L7 streams, where the hub holds a credential for this agent's cluster (an ANP agent itself only dials TCP). */
  l7: AnpL7 | undefined;
  bytesIn = 0;
  bytesOut = 0;

  constructor(
    private readonly call: grpc.ServerDuplexStream<Packet, Packet>,
    private readonly log: Logger,
    private readonly apiserverAddress = ANP_APISERVER_ADDRESS,
  ) {
    super();
    call.on('data', (p: Packet) => this.onPacket(p));
    call.on('drain', () => {
      this.writable = true;
      this.flush();
    });
    call.on('end', () => this.close());
    call.on('cancelled', () => this.close(new TunnelError('SESSION_CLOSED', 'agent call cancelled')));
    call.on('error', (err: Error) => this.close(new TunnelError('SESSION_CLOSED', err.message)));
    call.on('close', () => this.close());
  }

  get openStreams(): number {
    return this.conns.size;
  }

  get pendingOpens(): number {
    return this.pending.size;
  }

  get usable(): boolean {
    return !this.closed && !this.draining && !this.peerDraining;
  }

  open(request: OpenRequest, options: OpenOptions = {}): Promise<MuxStream> {
    if (this.closed) return Promise.reject(new TunnelError('SESSION_CLOSED'));
    if (this.draining || this.peerDraining) return Promise.reject(new TunnelError('GOING_AWAY'));
    if (request.kind === 'http' && this.l7) return this.l7.open(request, options);
    if (request.kind !== 'tcp') return Promise.reject(new TunnelError('TARGET_NOT_ALLOWED', 'an ANP agent serves TCP connections only'));
    if (options.signal?.aborted) return Promise.reject(new TunnelError('CANCELLED'));
    const address = request.target === APISERVER_TARGET ? this.apiserverAddress : request.target;
    const random = String(this.nextRandom++);
    // No per-stream credit on this protocol (HTTP/2 flow control holds the call).
    const stream = new MuxStream(this, this.nextStreamId++, request, 'unmetered');
    this.send(packets.dialReq(address, random));
    return awaitOpen(this.pending, random, stream, {
      timeoutMs: options.timeoutMs ?? Defaults.openTimeoutMs,
      ...(options.signal ? { signal: options.signal } : {}),
      request: 'DIAL_REQ',
      abandon: (err) => {
        // The agent may still answer: a late DIAL_RSP is closed at once (onPacket).
        if (!this.closed) this.send(packets.dialCls(random));
        stream.abort(err);
      },
      settled: () => this.maybeIdle(),
    });
  }

  private onPacket(p: Packet): void {
    switch (p.type) {
      case 'DIAL_RSP': {
        const r = p.dialResponse;
        if (!r) return;
        const pending = this.pending.get(r.random);
        if (!pending) {
          // Answer to a dial given up: close what the agent opened.
          if (r.connectID !== '0' && !r.error) this.send(packets.closeReq(r.connectID));
          return;
        }
        if (r.error) return pending.reject(new TunnelError('DIAL_FAILED', `agent could not dial: ${r.error}`));
        if (r.connectID === '0' || this.conns.has(r.connectID)) {
          this.send(packets.closeReq(r.connectID));
          return pending.reject(new TunnelError('PROTOCOL_ERROR', `agent answered with connection id ${r.connectID}, which is not usable`));
        }
        const conn: Conn = { connectID: r.connectID, stream: pending.stream, remoteClosed: false, closeSent: false };
        this.conns.set(r.connectID, conn);
        this.byStream.set(pending.stream, conn);
        pending.stream.onOpened(MAX_WINDOW);
        pending.resolve(pending.stream);
        return;
      }
      case 'DATA': {
        const d = p.data;
        const conn = d && this.conns.get(d.connectID);
        if (!d || !conn) {
          if (d && d.connectID !== '0') this.send(packets.closeReq(d.connectID));
          return;
        }
        if (conn.remoteClosed || d.data.length === 0) return;
        const s = conn.stream;
        this.bytesIn += d.data.length;
        s.onData(d.data);
        if (s.readableLength > RECEIVE_BOUND && !this.callPaused) {
          this.callPaused = true;
          this.call.pause();
        }
        return;
      }
      case 'CLOSE_RSP': {
        const id = p.closeResponse?.connectID ?? '0';
        const conn = this.conns.get(id);
        if (!conn || conn.remoteClosed) return;
        conn.remoteClosed = true;
        const s = conn.stream;
        if (p.closeResponse!.error && !conn.closeSent) {
          s.abort(new TunnelError('UPSTREAM_RESET', `agent: ${p.closeResponse!.error}`));
          return;
        }
        // The agent's end is closed both ways: end our reading side; our own
        // end (FIN) then needs nothing sent.
        s.onFin();
        return;
      }
      case 'DIAL_CLS': {
        const pending = this.pending.get(p.closeDial?.random ?? '');
        pending?.reject(new TunnelError('DIAL_FAILED', 'agent closed the dial'));
        return;
      }
      case 'DRAIN':
        if (!this.peerDraining) {
          this.peerDraining = true;
          this.log.info('ANP agent is draining: no new connections on it');
          this.emit('goaway', new TunnelError('GOING_AWAY', 'agent draining'));
        }
        return;
      default:
        this.log.debug({ type: p.type }, 'ANP agent sent a packet a server does not expect; ignored');
    }
  }

  // ------------------------------------------------ StreamHost

  schedule(stream: MuxStream): void {
    this.ready.add(stream);
    this.flush();
  }

  sendWindow(): void {
    // A reader drained: resume the call once no stream holds more than the bound.
    if (!this.callPaused) return;
    for (const c of this.conns.values()) if (c.stream.readableLength > RECEIVE_BOUND) return;
    this.callPaused = false;
    this.call.resume();
  }

  release(stream: MuxStream): void {
    this.ready.delete(stream);
    const conn = this.byStream.get(stream);
    if (!conn) return;
    this.byStream.delete(stream);
    this.conns.delete(conn.connectID);
    // Reset, or closed by us without a FIN having told the agent (a FIN sent is a CLOSE_REQ sent, see flush): close its end.
    if (!conn.remoteClosed && !conn.closeSent && !this.closed) this.send(packets.closeReq(conn.connectID));
    this.sendWindow();
    this.maybeIdle();
  }

  private maybeIdle(): void {
    if (this.conns.size === 0 && this.pending.size === 0) this.emit('idle');
  }

  private flush(): void {
    for (const s of this.ready) {
      if (!this.writable || this.closed) return;
      const conn = this.byStream.get(s);
      if (!conn) {
        this.ready.delete(s);
        continue;
      }
      for (;;) {
        const done: Array<(err?: Error | null) => void> = [];
        const data = s.takeData(64 * 1024, done);
        if (data) {
          this.bytesOut += data.length;
          if (!conn.remoteClosed) this.writable = this.send(packets.data(conn.connectID, data));
          for (const cb of done) process.nextTick(cb);
          if (!this.writable) return;
          continue;
        }
        if (s.takeFin()) {
          // ANP has no half-close: our FIN closes the agent's connection.
          if (!conn.remoteClosed && !conn.closeSent) {
            conn.closeSent = true;
            this.send(packets.closeReq(conn.connectID));
          }
        }
        break;
      }
      this.ready.delete(s);
    }
  }

  private send(p: Packet): boolean {
    if (this.call.writableEnded || this.call.destroyed) return true;
    return this.call.write(p);
  }

  // ------------------------------------------------ lifecycle

  /** No new streams; close once every connection has ended, or when the grace period is over. */
  drain(graceMs: number): Promise<void> {
    this.draining = true;
    if (this.closed) return Promise.resolve();
    return closeWhenIdle(this, this.conns.size === 0 && this.pending.size === 0, graceMs);
  }


  /** Ends the agent's call; every stream and pending dial fails with `err`. */
  close(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    const failure = err instanceof TunnelError ? err : new TunnelError('SESSION_CLOSED', err?.message ?? 'agent disconnected');
    for (const p of [...this.pending.values()]) p.reject(failure);
    for (const c of [...this.conns.values()]) c.stream.abort(failure);
    this.conns.clear();
    this.byStream.clear();
    this.ready.clear();
    this.l7?.close();
    if (!this.call.writableEnded && !this.call.destroyed) this.call.end();
    this.emit('close', err);
  }
}
