import type { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { Client, type Dispatcher } from 'undici';
import { EndAfterRead, type Identity, type MuxStream } from '@kubetunnel/shared';
import type { DialResult } from './dial.js';
import type { Refusal } from './refusal.js';
import type { AgentTunnel } from './registry.js';

/**
 * Keep-alive over the tunnel for L7 requests. An `http` stream's OPEN names
 * one caller, and the agent acts for that caller on every request the stream
 * carries; so a stream is kept, after its answer, for later requests of the
 * same caller to the same cluster, and never for anyone else's. Streams are
 * kept per client connection: a PooledStreams per (client connection,
 * cluster, identity), each of its streams an undici Client that speaks
 * HTTP/1.1 on it. A caller's keep-alive connection thus pays one OPEN for its
 * first request only, and its streams end when it does (the frontend's
 * keep-alive timeout closes idle client connections; an idle stream is
 * closed sooner on its own timer).
 *
 * A kept stream is never handed out again once it failed, its agent closed
 * it or ended its half, or its tunnel stopped taking new streams (GOAWAY,
 * closed): such streams are destroyed before a request picks one.
 */

export interface StreamPoolLimits {
  /** Idle streams kept per (client connection, cluster, identity). */
  freePerKey: number;
  /** (cluster, identity) pairs one client connection keeps streams for; the least recently used one gives way. */
  keysPerConnection: number;
  /** Idle streams kept by the whole frontend; beyond it a stream is closed after its answer. */
  freeTotal: number;
  /** An idle stream is closed after this long. */
  idleMs: number;
}

export const DEFAULT_POOL_LIMITS: StreamPoolLimits = { freePerKey: 4, keysPerConnection: 8, freeTotal: 4096, idleMs: 30_000 };

/** A dial the cluster refused: the refusal to answer with. */
export class DialRefused extends Error {
  constructor(readonly refusal: Refusal) {
    super(refusal.message);
  }
}

/** Opens a new `http` stream for one (cluster, identity). */
export type StreamDialer = () => Promise<DialResult>;

/** One request's use of a stream, for its audit line and for sending it again. */
export interface StreamUse {
  /** The stream was kept from an earlier request. */
  readonly reused: boolean;
  /** Bytes the stream carried each way since the request got it (0 before it is open). */
  bytes(): { in: number; out: number };
  /** Whether no byte of the request has gone into the tunnel yet. */
  unsent(): boolean;
}

/** The origin undici is told for a stream: requests carry their own Host. */
const ORIGIN = 'http://l7.kubetunnel.invalid';

/** One tunnel stream and the undici Client that sends requests on it; it is dialed on the first request and never again. */
class PooledStream {
  readonly client: Client;
  stream?: MuxStream;
  tunnel?: AgentTunnel;
  private dialed = false;

  /** `onStream` takes a new stream into its pool, or refuses it (false). */
  constructor(dial: StreamDialer, onStream: (s: PooledStream) => boolean) {
    this.client = new Client(ORIGIN, {
      connect: (_options, done) => {
        // A stream that closed is not replaced: its requests fail, and the pool picks another stream.
        if (this.dialed) return done(new Error('this tunnel stream is closed'), null);
        this.dialed = true;
        dial().then(
          (result) => {
            if (!result.ok) return done(new DialRefused(result.refusal), null);
            this.stream = result.stream;
            this.tunnel = result.tunnel;
            // undici's types want a net.Socket; it reads and writes any Duplex.
            if (onStream(this)) return done(null, new EndAfterRead(result.stream) as unknown as Socket);
            result.stream.destroy();
            done(new Error('the client connection is gone'), null);
          },
          (err: unknown) => done(err instanceof Error ? err : new Error(String(err)), null),
        );
      },
      pipelining: 1,
      // No time limit on an answer: a watch waits for events as long as the caller keeps it.
      headersTimeout: 0,
      bodyTimeout: 0,
      // Idle streams are closed by the pool's own timer.
      keepAliveTimeout: 2 ** 31 - 1,
      keepAliveMaxTimeout: 2 ** 31 - 1,
    });
  }

  /** Whether the stream may take another request: open both ways, its tunnel still taking streams. */
  get healthy(): boolean {
    const s = this.stream;
    return s !== undefined && s.state === 'open' && !s.destroyed && s.writable && !s.readableEnded && this.tunnel?.session.usable === true;
  }

  destroy(): void {
    this.stream?.destroy();
    void this.client.destroy().catch(() => {});
  }
}

/** The pooled streams of one client connection, cluster and identity. */
export class PooledStreams {
  /** Idle streams, the most recently used last, and their idle timers. */
  private readonly idle = new Map<PooledStream, NodeJS.Timeout>();
  /** Every stream of this key, idle or carrying a request. */
  private readonly all = new Set<PooledStream>();
  private retired = false;

  constructor(
    private readonly pool: StreamPool,
    private readonly dial: StreamDialer,
  ) {}

  /**
   * Sends a request on the most recently used idle stream, or on a new one;
   * the stream is kept or closed once its answer is in. What is returned
   * tells what the request's stream carried.
   */
  dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandlers): StreamUse {
    let kept: PooledStream | undefined;
    for (const ps of this.idle.keys()) kept = ps;
    const ps = kept ?? this.open();
    if (kept) this.unidle(kept);
    const at = { in: ps.stream?.bytesIn ?? 0, out: ps.stream?.bytesOut ?? 0 };
    ps.client.dispatch(options, new Returning(handler, (ok) => (ok ? this.release(ps) : this.discard(ps))));
    return {
      reused: kept !== undefined,
      bytes: () => ({ in: (ps.stream?.bytesIn ?? 0) - at.in, out: (ps.stream?.bytesOut ?? 0) - at.out }),
      unsent: () => (ps.stream?.bytesOut ?? 0) === at.out,
    };
  }

  private open(): PooledStream {
    const ps = new PooledStream(this.dial, (opened) => {
      if (this.retired) return false;
      // The agent ended its half while the stream was idle: it takes no more requests.
      opened.stream!.on('end', () => {
        if (this.idle.has(opened)) this.discard(opened);
      });
      opened.stream!.once('close', () => this.discard(opened));
      return true;
    });
    this.all.add(ps);
    return ps;
  }

  /** After an answer: the stream is kept idle, or closed. */
  private release(ps: PooledStream): void {
    if (this.retired || !ps.healthy || this.idle.size >= this.pool.limits.freePerKey || !this.pool.takeIdle()) return this.discard(ps);
    const timer = setTimeout(() => this.discard(ps), this.pool.limits.idleMs);
    timer.unref();
    this.idle.set(ps, timer);
  }

  /** Destroys the idle streams that can take no more requests, so that the next request opens a fresh one. */
  prune(): void {
    for (const ps of this.idle.keys()) if (!ps.healthy) this.discard(ps);
  }

  /** Closes the idle streams and keeps none from now on; streams carrying a request finish it and close. */
  retire(): void {
    this.retired = true;
    for (const ps of this.idle.keys()) this.discard(ps);
  }

  /** Closes every stream, idle or not. */
  destroy(): void {
    this.retire();
    for (const ps of this.all) this.discard(ps);
  }

  get idleStreams(): number {
    return this.idle.size;
  }

  /** A stream that closed or failed: out of the pool, and closed with its Client. */
  private discard(ps: PooledStream): void {
    this.unidle(ps);
    this.all.delete(ps);
    ps.destroy();
  }

  private unidle(ps: PooledStream): void {
    const timer = this.idle.get(ps);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.idle.delete(ps);
    this.pool.giveIdle();
  }
}

/** A request's handler that gives its stream back once the answer is in (true), or has it dropped when the request failed (false). */
class Returning implements Dispatcher.DispatchHandlers {
  constructor(
    private readonly handler: Dispatcher.DispatchHandlers,
    private readonly done: (ok: boolean) => void,
  ) {}

  onConnect(abort: (err?: Error) => void): void {
    this.handler.onConnect?.(abort);
  }

  onHeaders(status: number, headers: Buffer[], resume: () => void, statusText: string): boolean {
    return this.handler.onHeaders?.(status, headers, resume, statusText) ?? true;
  }

  onData(chunk: Buffer): boolean {
    return this.handler.onData?.(chunk) ?? true;
  }

  onComplete(trailers: string[] | null): void {
    this.handler.onComplete?.(trailers);
    this.done(true);
  }

  onError(err: Error): void {
    this.done(false);
    this.handler.onError?.(err);
  }
}

/** The pools of every client connection of a frontend. */
export class StreamPool {
  private readonly byConnection = new Map<EventEmitter, Map<string, PooledStreams>>();
  private idleTotal = 0;
  private closed = false;

  constructor(readonly limits: StreamPoolLimits = DEFAULT_POOL_LIMITS) {}

  /**
   * The streams of `identity` to `cluster` for requests of client connection
   * `connection` (they close with it: an HTTP/1.1 socket or an HTTP/2
   * session, either emits 'close'); `dial` opens a new one.
   */
  streamsFor(connection: EventEmitter, cluster: string, identity: Identity, dial: StreamDialer): PooledStreams {
    let keys = this.byConnection.get(connection);
    if (!keys) {
      keys = new Map();
      this.byConnection.set(connection, keys);
      connection.once('close', () => this.drop(connection));
    }
    const key = `${cluster}\n${identityKey(identity)}`;
    let streams = keys.get(key);
    if (streams) keys.delete(key); // re-inserted below: the Map's order is the order of use
    else {
      streams = new PooledStreams(this, dial);
      if (this.closed) streams.retire();
    }
    keys.set(key, streams);
    if (keys.size > this.limits.keysPerConnection) {
      const [oldest, lru] = keys.entries().next().value as [string, PooledStreams];
      keys.delete(oldest);
      lru.retire();
    }
    streams.prune();
    return streams;
  }

  /** Counts one more idle stream; false when the frontend keeps as many as it may. */
  takeIdle(): boolean {
    if (this.closed || this.idleTotal >= this.limits.freeTotal) return false;
    this.idleTotal += 1;
    return true;
  }

  giveIdle(): void {
    this.idleTotal -= 1;
  }

  /** Idle streams kept now, across every client connection. */
  get idleStreams(): number {
    return this.idleTotal;
  }

  /** Closes every idle stream and keeps none from now on. */
  close(): void {
    this.closed = true;
    for (const connection of [...this.byConnection.keys()]) this.drop(connection);
  }

  private drop(connection: EventEmitter): void {
    const keys = this.byConnection.get(connection);
    this.byConnection.delete(connection);
    for (const streams of keys?.values() ?? []) streams.destroy();
  }
}

/** Keys made so far, by identity: a client connection's requests carry the same identity object (see callerOf in l7.ts). */
const identityKeys = new WeakMap<Identity, string>();

/** The same string for the same identity, whatever the order of its extra keys. */
function identityKey(id: Identity): string {
  let key = identityKeys.get(id);
  if (key === undefined) {
    const extra = id.extra ? Object.keys(id.extra).sort().map((k) => [k, id.extra![k]]) : [];
    key = JSON.stringify([id.user, id.uid ?? null, id.groups, extra]);
    identityKeys.set(id, key);
  }
  return key;
}
