import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { WebSocket } from 'ws';
import {
  AGENT_PATH,
  Defaults,
  RegistrationHeaders as H,
  SUBPROTOCOL,
  Session,
  WsTransport,
  type IncomingOpen,
  type Logger,
} from '@kubetunnel/shared';
import { Backoff } from './backoff.js';
import type { AgentConfig } from './config.js';

export interface LiveSession {
  serverId: string;
  url: string;
  session: Session;
}

const zeroMask = (mask: Buffer) => mask.fill(0);

/** How long a tunnel must stay up before the backoff starts again from the beginning. */
const STABLE_MS = 10_000;

/**
 * Keeps one tunnel to every server replica. It dials each --server URL (a
 * URL may be a load balancer over several replicas) until it holds a tunnel
 * to as many distinct server ids as the servers report there are; a
 * connection that lands on a replica it already holds is closed and retried
 * later. Lost tunnels are redialed with exponential backoff and full jitter.
 *
 * Events: 'session' (LiveSession), 'disconnect' (LiveSession).
 */
export class Connector extends EventEmitter {
  private readonly live = new Map<string, LiveSession>();
  /** Sessions whose server sent GOAWAY: they finish their streams, nothing new. */
  private readonly draining = new Set<Session>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly sockets = new Set<WebSocket>();
  private readonly backoff: Backoff;
  private wanted: number;
  private dialing = 0;
  private nextUrl = 0;
  private closed = false;

  constructor(
    private readonly config: AgentConfig,
    private readonly onOpen: (incoming: IncomingOpen, log: Logger) => void,
    private readonly log: Logger,
  ) {
    super();
    this.backoff = new Backoff(config.backoff.initialMs, config.backoff.maxMs);
    this.wanted = config.servers.length;
  }

  start(): void {
    this.ensure(0);
  }

  /** Live (not draining) tunnels. */
  sessions(): LiveSession[] {
    return [...this.live.values()];
  }

  get ready(): boolean {
    return this.live.size > 0;
  }

  /** Streams open on every tunnel, draining ones included. */
  get openStreams(): number {
    let n = 0;
    for (const s of this.live.values()) n += s.session.openStreams;
    for (const s of this.draining) n += s.openStreams;
    return n;
  }

  /** Dials as many new tunnels as are missing, after `delayMs`. */
  private ensure(delayMs: number): void {
    if (this.closed) return;
    const missing = this.wanted - this.live.size - this.dialing;
    for (let i = 0; i < missing; i++) {
      this.dialing++;
      const url = this.config.servers[this.nextUrl++ % this.config.servers.length]!;
      this.later(delayMs, () => this.dial(url));
    }
  }

  private later(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }

  /** One dial attempt; it ends (once) by scheduling what is still missing. */
  private dial(url: string): void {
    let settled = false;
    let opened = false;
    const done = (nextDelay: number) => {
      if (settled) return;
      settled = true;
      this.dialing--;
      this.ensure(nextDelay);
    };
    if (this.closed) return done(0);
    const c = this.config;
    const headers: Record<string, string> = {
      [H.cluster]: c.cluster,
      [H.agentId]: c.agentId,
      [H.allowDest]: c.allowDest.join(','),
    };
    if (c.apiserverCA) headers[H.apiserverCA] = Buffer.from(c.apiserverCA, 'utf8').toString('base64');
    if (c.apiserverTokenFile) headers[H.l7] = '1';
    const ws = new WebSocket(new URL(AGENT_PATH, url), SUBPROTOCOL, {
      cert: c.cert,
      key: c.key,
      ca: c.ca,
      headers,
      perMessageDeflate: false,
      maxPayload: Defaults.maxWsPayload,
      handshakeTimeout: 10_000,
      // Masking guards plaintext WebSockets against cache poisoning by
      // intermediaries; inside TLS it only costs a copy of every byte. A zero
      // mask makes ws skip it.
      generateMask: zeroMask,
    });
    this.sockets.add(ws);
    ws.once('close', () => {
      this.sockets.delete(ws);
      if (!opened) done(this.backoff.next());
    });
    let serverId = '';
    let count = 1;
    ws.once('upgrade', (res: IncomingMessage) => {
      serverId = String(res.headers[H.serverId] ?? '');
      count = Number(res.headers[H.serverCount] ?? 1) || 1;
    });
    ws.once('unexpected-response', (req, res: IncomingMessage) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d.slice(0, 500)));
      res.once('end', () => {
        this.log.error({ server: url, status: res.statusCode, reason: body.trim() }, 'server refused registration');
        req.destroy();
        this.sockets.delete(ws);
        // The operator has to fix this (certificate, cluster name): retry slowly.
        done(this.backoff.max());
      });
    });
    ws.on('error', (err) => {
      if (opened || settled) return;
      const delay = this.backoff.next();
      this.log.warn({ server: url, err: err.message, retryInMs: delay }, 'could not reach server');
      done(delay);
    });
    ws.once('open', () => {
      opened = true;
      // The session must exist now: the server's first frames may have
      // arrived together with the 101 answer.
      if (this.closed) {
        ws.close(1001, 'agent stopping');
        return done(0);
      }
      this.wanted = Math.max(this.config.servers.length, count);
      if (!serverId || this.live.has(serverId)) {
        ws.close(1000, 'already connected to this server');
        const delay = this.backoff.next();
        this.log.debug({ server: url, serverId, retryInMs: delay }, 'landed on a server already held');
        return done(delay);
      }
      this.attach(url, serverId, ws);
      done(0);
    });
  }

  private attach(url: string, serverId: string, ws: WebSocket): void {
    const session = new Session(new WsTransport(ws), { role: 'agent', ...this.config.session });
    const log = this.log.child({ serverId, server: url });
    const live: LiveSession = { serverId, url, session };
    this.live.set(serverId, live);
    session.on('open', (incoming: IncomingOpen) => this.onOpen(incoming, log));
    session.on('streamError', (streamId: number, err: Error) =>
      log.warn({ streamId, err: err.message }, 'stream failed while receiving; reset that stream only'),
    );
    const stable = setTimeout(() => this.backoff.reset(), STABLE_MS);
    log.info('tunnel up');
    session.once('goaway', () => {
      // The replica is draining: keep its streams, open a fresh tunnel.
      log.info('server is draining; dialing a new tunnel');
      if (this.live.get(serverId) === live) this.live.delete(serverId);
      this.draining.add(session);
      this.ensure(0);
    });
    session.once('close', (err?: Error) => {
      clearTimeout(stable);
      this.draining.delete(session);
      if (this.live.get(serverId) === live) this.live.delete(serverId);
      log.info({ reason: err?.message ?? 'closed' }, 'tunnel down');
      this.emit('disconnect', live);
      this.ensure(this.closed ? 0 : this.backoff.next());
    });
    this.emit('session', live);
  }

  /** Stops dialing; GOAWAY on every tunnel; closes each once its streams end or the grace period is over. */
  async drain(graceMs: number): Promise<void> {
    this.stop();
    const all = [...this.live.values()].map((l) => l.session).concat([...this.draining]);
    await Promise.all(all.map((s) => s.drain(graceMs)));
  }

  /** Closes everything at once. */
  close(): void {
    this.stop();
    for (const l of this.live.values()) l.session.close();
    for (const s of this.draining) s.close();
    for (const ws of this.sockets) ws.terminate();
  }

  private stop(): void {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }
}
