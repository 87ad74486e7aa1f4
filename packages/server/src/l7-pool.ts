import type { EventEmitter } from 'node:events';
import http from 'node:http';
import type { Duplex } from 'node:stream';
import type { Identity, MuxStream } from '@kubetunnel/shared';
import type { DialResult } from './dial.js';
import type { Refusal } from './refusal.js';
import type { AgentTunnel } from './registry.js';

/**
 * Keep-alive over the tunnel for L7 requests. An `http` stream's OPEN names
 * one caller, and the agent acts for that caller on every request the stream
 * carries; so a stream is kept, after its answer, for later requests of the
 * same caller to the same cluster, and never for anyone else's. Streams are
 * kept per client connection: an http.Agent per (client connection, cluster,
 * identity) whose connections are tunnel streams. A caller's keep-alive
 * connection thus pays one OPEN for its first request only, and its streams
 * end when it does (the frontend's keep-alive timeout closes idle client
 * connections; an idle stream is closed sooner on its own timer).
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

const noop = (): void => {};

/** The pooled streams of one client connection, cluster and identity. */
export class PooledStreams extends http.Agent {
  /** Idle streams and their idle timers. */
  private readonly idle = new Map<Duplex, NodeJS.Timeout>();
  /** The tunnel each stream runs on. */
  private readonly tunnels = new WeakMap<Duplex, AgentTunnel>();
  private retired = false;

  constructor(
    private readonly pool: StreamPool,
    private readonly dial: StreamDialer,
  ) {
    super({ keepAlive: true, maxFreeSockets: pool.limits.freePerKey, scheduling: 'lifo' });
  }

  override createConnection(_options: unknown, done?: (err: Error | null, socket: Duplex) => void): Duplex | undefined {
    // A failed dial has no socket to hand back.
    const fail = (err: Error): void => done?.(err, undefined as unknown as Duplex);
    this.dial().then(
      (result) => {
        if (!result.ok) return fail(new DialRefused(result.refusal));
        const { stream, tunnel } = result;
        if (this.retired) {
          stream.destroy();
          return fail(new Error('the client connection is gone'));
        }
        this.tunnels.set(stream, tunnel);
        // http.Agent refs and unrefs the sockets it keeps; a stream holds no
        // handle of its own (its tunnel's socket keeps the process alive).
        Object.assign(stream, { ref: noop, unref: noop });
        // The agent ended its half while the stream was idle: it takes no more requests.
        stream.on('end', () => {
          if (this.idle.has(stream)) stream.destroy();
        });
        stream.once('close', () => this.unidle(stream));
        done?.(null, stream);
      },
      (err: unknown) => fail(err instanceof Error ? err : new Error(String(err))),
    );
    return undefined;
  }

  /** Whether a stream may take another request: open both ways, its tunnel still taking streams. */
  private healthy(stream: Duplex): boolean {
    const s = stream as MuxStream;
    return s.state === 'open' && !s.destroyed && s.writable && !s.readableEnded && this.tunnels.get(s)?.session.usable === true;
  }

  /** After an answer: keep the stream idle (true), or have it destroyed. */
  override keepSocketAlive(socket: Duplex): boolean {
    if (this.retired || !this.healthy(socket) || !this.pool.takeIdle()) return false;
    const timer = setTimeout(() => socket.destroy(), this.pool.limits.idleMs);
    timer.unref();
    this.idle.set(socket, timer);
    return true;
  }

  override reuseSocket(socket: Duplex, req: http.ClientRequest): void {
    this.unidle(socket);
    (http.Agent.prototype as unknown as { reuseSocket(s: Duplex, r: http.ClientRequest): void }).reuseSocket.call(this, socket, req);
  }

  /** Destroys the idle streams that can take no more requests, so that the next request opens a fresh one. */
  prune(): void {
    for (const stream of this.idle.keys()) if (!this.healthy(stream)) stream.destroy();
  }

  /** Closes the idle streams and keeps none from now on; streams carrying a request finish it and close. */
  retire(): void {
    this.retired = true;
    for (const stream of [...this.idle.keys()]) stream.destroy();
  }

  get idleStreams(): number {
    return this.idle.size;
  }

  private unidle(stream: Duplex): void {
    const timer = this.idle.get(stream);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.idle.delete(stream);
    this.pool.giveIdle();
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
  agentFor(connection: EventEmitter, cluster: string, identity: Identity, dial: StreamDialer): PooledStreams {
    let agents = this.byConnection.get(connection);
    if (!agents) {
      agents = new Map();
      this.byConnection.set(connection, agents);
      connection.once('close', () => this.drop(connection));
    }
    const key = `${cluster}\n${identityKey(identity)}`;
    let agent = agents.get(key);
    if (agent) agents.delete(key); // re-inserted below: the Map's order is the order of use
    else {
      agent = new PooledStreams(this, dial);
      if (this.closed) agent.retire();
    }
    agents.set(key, agent);
    if (agents.size > this.limits.keysPerConnection) {
      const [oldest, lru] = agents.entries().next().value as [string, PooledStreams];
      agents.delete(oldest);
      lru.retire();
    }
    agent.prune();
    return agent;
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
    const agents = this.byConnection.get(connection);
    this.byConnection.delete(connection);
    for (const agent of agents?.values() ?? []) {
      agent.retire();
      agent.destroy();
    }
  }
}

/** The same string for the same identity, whatever the order of its extra keys. */
function identityKey(id: Identity): string {
  const extra = id.extra ? Object.keys(id.extra).sort().map((k) => [k, id.extra![k]]) : [];
  return JSON.stringify([id.user, id.uid ?? null, id.groups, extra]);
}
