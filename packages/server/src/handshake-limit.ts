import os from 'node:os';
import type https from 'node:https';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import client from 'prom-client';
import { respondRaw, type Logger } from '@kubetunnel/shared';

/**
 * The default of --max-concurrent-handshakes: 16 per core, at most 64. A
 * server process does its TLS on one thread; the other cores carry the
 * kernel's network work and the garbage collector, so a bigger machine
 * registers somewhat faster, but not in proportion. What the limit bounds
 * is the handshake work queued in the event loop at once (at most twice the
 * limit, see HandshakeLimit), and with it the delay a storm adds to every
 * other connection: 2–3 ms of server CPU per agent registration (measured
 * on the 2-core benchmark machine: mutual TLS with the certificates `certs`
 * issues, the upgrade and the registration; docs/benchmarks.md "Fleet
 * scale") times 2 × 32 is about 0.2 s at worst there.
 */
export function defaultMaxConcurrentHandshakes(): number {
  return Math.min(64, 16 * os.availableParallelism());
}

/** Longest Retry-After the gateway asks for (seconds). */
const MAX_RETRY_AFTER_S = 30;
/** Window over which the registration rate and the demand are measured. */
const WINDOW_MS = 1000;
/** Connections that may wait before TLS; past it they are closed at accept. */
const MAX_QUEUED = 4096;
/** How often limited connections are summed up in one log line. */
const LOG_INTERVAL_MS = 10_000;

const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

const keyOf = (s: { remoteAddress?: string | undefined; remotePort?: number | undefined }) =>
  s.remoteAddress === undefined ? undefined : `${s.remoteAddress}|${s.remotePort}`;

interface Conn {
  raw: Socket;
  acceptedAt: number;
  /**
   * admitted: holds one of the `max` slots; over: past the limit, in TLS,
   * bound for a 503 unless a slot frees first; queued: waiting before TLS.
   */
  state: 'admitted' | 'over' | 'queued';
}

/** Counts in fixed windows: this one and the one before it. */
class Windowed {
  private start = 0;
  private current = 0;
  private previous = 0;

  private roll(now: number): void {
    const start = now - (now % WINDOW_MS);
    if (start === this.start) return;
    this.previous = start - this.start === WINDOW_MS ? this.current : 0;
    this.current = 0;
    this.start = start;
  }

  add(now: number): void {
    this.roll(now);
    this.current++;
  }

  /** Events in the last WINDOW_MS, the previous window weighted by how much of it that covers. */
  rate(now: number): number {
    this.roll(now);
    const into = (now - this.start) / WINDOW_MS;
    return this.current + this.previous * (1 - into);
  }
}

/** The shortest time a rate is measured over (a storm's first registrations come close together). */
const MIN_RATE_SPAN_MS = 100;
/** Registration times kept for the rate; past it the oldest go (the rate is then at least this a second anyway). */
const MAX_RATE_SAMPLES = 10_000;

/**
 * Events a second: those of the last WINDOW_MS, over the time since the
 * first of them when that is shorter (at least MIN_RATE_SPAN_MS). A storm's
 * rate is thus known within its first tenth of a second, not a window later:
 * counted over a whole window, the first registrations of a storm read as a
 * slow server, and the agents refused then were told to stay away for many
 * times the time the server needed.
 */
export class RecentRate {
  private readonly times: number[] = [];
  private head = 0;

  add(now: number): void {
    this.trim(now);
    if (this.times.length - this.head >= MAX_RATE_SAMPLES) this.head++;
    this.times.push(now);
  }

  perSecond(now: number): number {
    this.trim(now);
    const n = this.times.length - this.head;
    if (n === 0) return 0;
    const span = Math.min(WINDOW_MS, Math.max(MIN_RATE_SPAN_MS, now - this.times[this.head]!));
    return (n * 1000) / span;
  }

  private trim(now: number): void {
    while (this.head < this.times.length && this.times[this.head]! <= now - WINDOW_MS) this.head++;
    if (this.head > 1024 && this.head * 2 > this.times.length) {
      this.times.splice(0, this.head);
      this.head = 0;
    }
  }
}

/**
 * A bound on agent registrations in progress at once on the agent gateway,
 * against reconnect storms. The CPU of a registration is almost all in the
 * TLS handshake (a private-key signature and the client's certificate
 * chain), which Node does on the event loop as soon as a connection is
 * handed to TLS; a thousand agents coming back at once would otherwise queue
 * a thousand handshakes in front of every other connection of the server.
 *
 * - At most `max` connections are admitted: counted from TCP accept until
 *   their upgrade request has been answered (registered or refused) or they
 *   close.
 * - A connection accepted past that is over the limit. Up to `max` of them
 *   at a time complete TLS and, at their upgrade request, take a slot if one
 *   has freed meanwhile, or are answered 503 with Retry-After: the agent
 *   waits at least that long (with jitter) before it dials this server
 *   again, so the TLS work of a refusal is not repeated at once.
 * - Past those, a connection waits before TLS, its ClientHello unread (no
 *   CPU spent on it), and is handed to TLS when an admitted slot frees,
 *   oldest first. The wait is bounded by the listener's handshake timeout
 *   and pending limit (guard.ts), and the queue by MAX_QUEUED; past it a
 *   connection is closed at accept.
 *
 * So at most 2 × max handshakes are ever in the event loop's work at once.
 * Retry-After spreads the refused agents over the time the server needs for
 * them: the connections waiting plus the 503s of the last second, divided
 * by the rate of registrations lately (RecentRate; at least `max` a second),
 * in seconds, from 1 to 30.
 */
export class HandshakeLimit {
  private readonly conns = new Map<string, Conn>();
  private admittedCount = 0;
  private overCount = 0;
  /** Connections waiting before TLS, oldest first. */
  private readonly queue = new Set<Conn>();
  /** Node's own connection listener: wraps an accepted socket in TLS and starts the handshake. */
  private readonly startTls: (raw: Socket) => void;
  private peak = 0;
  private readonly done = new RecentRate();
  private readonly refused = new Windowed();
  private readonly limited: client.Counter<'response'>;
  private readonly queuedTotal: client.Counter;
  private readonly seconds: client.Histogram;
  private readonly logCounts = { '503': 0, closed: 0 };
  private readonly server: https.Server;
  private logTimer: NodeJS.Timeout | undefined;

  constructor(
    server: https.Server,
    readonly max: number,
    registry: client.Registry,
    private readonly log: Logger,
  ) {
    if (!Number.isInteger(max) || max < 1) throw new Error(`max concurrent handshakes must be a whole number of at least 1, got ${max}`);
    // The TLS server's own listener is taken out so that a connection past
    // the limits is handed to TLS only when there is room (Node documents
    // emitting 'connection' to hand a socket to a TLS server; this does the
    // same through the listener itself).
    const own = server.listeners('connection');
    if (own.length !== 1) throw new Error('HandshakeLimit: attach it to a new TLS server, before anything else listens for connections');
    this.server = server;
    this.startTls = own[0] as (raw: Socket) => void;
    server.removeListener('connection', this.startTls);
    const registers = [registry];
    this.limited = new client.Counter({
      name: 'kubetunnel_agent_handshakes_limited_total',
      help: 'Agent connections past --max-concurrent-handshakes refused: answered 503 with Retry-After at their upgrade (503), or closed at accept with the wait queue full (closed).',
      labelNames: ['response'],
      registers,
    });
    this.queuedTotal = new client.Counter({
      name: 'kubetunnel_agent_handshakes_queued_total',
      help: 'Agent connections past --max-concurrent-handshakes that waited before TLS for a slot.',
      registers,
    });
    this.seconds = new client.Histogram({
      name: 'kubetunnel_agent_handshake_duration_seconds',
      help: 'Agent connections admitted to register: from TCP accept to the answer to their upgrade request (TLS handshake included).',
      buckets: DURATION_BUCKETS,
      registers,
    });
    const self = this;
    new client.Gauge({
      name: 'kubetunnel_agent_handshakes',
      help: 'Agent connections between TCP accept and the answer to their upgrade: admitted (at most --max-concurrent-handshakes), over (past it, in TLS: 503 unless a slot frees first), queued (waiting before TLS).',
      labelNames: ['state'],
      registers,
      collect() {
        this.set({ state: 'admitted' }, self.admittedCount);
        this.set({ state: 'over' }, self.overCount);
        this.set({ state: 'queued' }, self.queue.size);
      },
    });
    new client.Gauge({
      name: 'kubetunnel_agent_handshakes_admitted_peak',
      help: 'The most agent connections admitted at once since the server started (never above --max-concurrent-handshakes).',
      registers,
      collect() {
        this.set(self.peak);
      },
    });
    new client.Gauge({
      name: 'kubetunnel_agent_handshakes_limit',
      help: 'The limit on agent connections admitted at once (--max-concurrent-handshakes).',
      registers,
      collect() {
        this.set(max);
      },
    });
    server.on('connection', (raw: Socket) => this.accept(raw));
    // A plain request (answered 426) is no registration: it holds no slot.
    server.on('request', (req: { socket: { remoteAddress?: string; remotePort?: number } }) => {
      const key = keyOf(req.socket);
      const conn = key === undefined ? undefined : this.conns.get(key);
      if (conn?.state === 'admitted') this.release(key!, conn);
    });
    server.once('close', () => this.flushLog());
  }

  /** Admitted connections now. */
  get admitted(): number {
    return this.admittedCount;
  }

  private accept(raw: Socket): void {
    const key = keyOf(raw);
    if (key === undefined) return void raw.destroy(); // gone already
    let state: Conn['state'] = 'admitted';
    if (this.admittedCount >= this.max) state = this.overCount < this.max ? 'over' : 'queued';
    if (state === 'queued' && this.queue.size >= MAX_QUEUED) {
      this.note('closed');
      raw.destroy();
      return;
    }
    const conn: Conn = { raw, acceptedAt: performance.now(), state };
    this.conns.set(key, conn);
    raw.once('close', () => this.release(key, conn));
    if (state === 'queued') {
      this.queue.add(conn);
      this.queuedTotal.inc();
      return;
    }
    if (state === 'admitted') this.take();
    else this.overCount++;
    this.startTls.call(this.server, raw);
  }

  private take(): void {
    this.admittedCount++;
    if (this.admittedCount > this.peak) this.peak = this.admittedCount;
  }

  private release(key: string, conn: Conn): void {
    if (this.conns.get(key) !== conn) return;
    this.conns.delete(key);
    if (conn.state === 'queued') return void this.queue.delete(conn);
    if (conn.state === 'admitted') this.admittedCount--;
    else this.overCount--;
    this.next();
  }

  /** Hands waiting connections to TLS while there are free slots, oldest first. */
  private next(): void {
    for (const conn of this.queue) {
      if (this.admittedCount >= this.max) return;
      this.queue.delete(conn);
      if (conn.raw.destroyed) continue;
      conn.state = 'admitted';
      this.take();
      this.startTls.call(this.server, conn.raw);
    }
  }

  /**
   * At an upgrade request: true if the connection holds a slot, or takes one
   * that has freed; otherwise answers 503 with Retry-After and returns false.
   */
  admit(socket: Duplex & { remoteAddress?: string; remotePort?: number }): boolean {
    const key = keyOf(socket);
    const conn = key === undefined ? undefined : this.conns.get(key);
    if (!conn) return true; // accepted before the limit was in place, or a later request on the connection
    if (conn.state === 'admitted') return true;
    if (this.admittedCount < this.max) {
      this.overCount--;
      conn.state = 'admitted';
      this.take();
      return true;
    }
    const retryAfter = this.retryAfter();
    this.note('503');
    this.release(key!, conn);
    socket.on('error', () => {});
    respondRaw(socket, 503, `too many agents registering at once; try again in ${retryAfter} s`, { 'Retry-After': String(retryAfter) });
    return false;
  }

  /** The upgrade request of an admitted connection has been answered: its slot is free. */
  finished(socket: { remoteAddress?: string; remotePort?: number }): void {
    const key = keyOf(socket);
    const conn = key === undefined ? undefined : this.conns.get(key);
    if (conn?.state !== 'admitted') return;
    this.seconds.observe((performance.now() - conn.acceptedAt) / 1000);
    this.done.add(performance.now());
    this.release(key!, conn);
  }

  /** Seconds for the agents refused lately to come back at the rate the server registers them. */
  private retryAfter(): number {
    const now = performance.now();
    const rate = Math.max(this.done.perSecond(now), this.max);
    return Math.min(MAX_RETRY_AFTER_S, Math.max(1, Math.ceil((this.queue.size + this.refused.rate(now) + 1) / rate)));
  }

  private note(response: '503' | 'closed'): void {
    this.limited.inc({ response });
    // Agents answered 503 come back after Retry-After (at least a second):
    // their count a second is the demand. Closed ones retry on their own.
    if (response === '503') this.refused.add(performance.now());
    if (this.logTimer === undefined) {
      this.log.info({ max: this.max, response }, 'agent connections over the handshake limit');
      this.logTimer = setTimeout(() => this.flushLog(true), LOG_INTERVAL_MS);
      this.logTimer.unref();
      return;
    }
    this.logCounts[response]++;
  }

  private flushLog(rearm = false): void {
    clearTimeout(this.logTimer);
    this.logTimer = undefined;
    const { '503': refused, closed } = this.logCounts;
    if (refused + closed === 0) return;
    this.log.info({ max: this.max, refused503: refused, closedAtAccept: closed }, 'agent connections over the handshake limit');
    this.logCounts['503'] = 0;
    this.logCounts.closed = 0;
    if (rearm) {
      this.logTimer = setTimeout(() => this.flushLog(true), LOG_INTERVAL_MS);
      this.logTimer.unref();
    }
  }
}
