import { EventEmitter } from 'node:events';
import type { ClientRequest, IncomingMessage } from 'node:http';
import type { ConnectionOptions } from 'node:tls';
import { WebSocket, type ClientOptions } from 'ws';
import {
  AGENT_PATH,
  Defaults,
  RegistrationHeaders as H,
  SUBPROTOCOL,
  Session,
  WsTransport,
  advertisedPingInterval,
  clientContext,
  type IncomingOpen,
  type Logger,
} from '@kubetunnel/shared';
import { Backoff, retryAfterMs } from './backoff.js';
import { DialAttempt } from './dial-attempt.js';
import type { AgentConfig } from './config.js';
import { dnsLookup, parseServerSource, resolveEndpoints, type Endpoint, type Lookup, type ServerSource } from './discovery.js';

export interface LiveSession {
  serverId: string;
  url: string;
  session: Session;
}

const zeroMask = (mask: Buffer) => mask.fill(0);

/** How long a tunnel must stay up before the backoff starts again from the beginning. */
const STABLE_MS = 10_000;
/** Longest wait before dialing again through a balancer that led to a replica already held. */
const REBALANCE_MAX_MS = 2_000;

/** What the server said in its 101 answer. */
interface ServerAnswer {
  serverId: string;
  /** Replicas it reports (load balancer mode). */
  count: number;
  /** Its PING interval, if it gave one in range. */
  pingIntervalMs: number | undefined;
}

/** What an agent dials its servers with: its client certificate and key, and the hub CA it trusts. */
export interface TunnelTls {
  cert: string;
  key: string;
  ca: string;
}

/**
 * Keeps one tunnel to every server replica. It dials each --server URL (a
 * URL may be a load balancer over several replicas) until it holds a tunnel
 * to as many distinct server ids as the servers report there are; it names
 * the replicas it holds when it dials, and one of those answers 409 rather
 * than register it twice (a short, jittered wait, then it dials again). A
 * dns:/// server is a headless Service: one tunnel per address it
 * resolves to, re-resolved every `dnsRefreshMs` and whenever a tunnel is
 * lost, so replicas added or removed are followed without a server count.
 * Lost tunnels are redialed with exponential backoff and full jitter.
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
  /** Waits after landing on a replica already held (balancer mode): short, jittered, capped. */
  private readonly rebalance: Backoff;
  private readonly sources: ServerSource[];
  private readonly lookup: Lookup;
  /** Where to dial now: the URLs, and the addresses dns:/// names resolved to at the last look. */
  private endpoints: Endpoint[];
  /** Replicas the servers behind URL endpoints report (load balancer mode). */
  private reportedCount = 1;
  private dialing = 0;
  /** Address endpoints with a dial under way. */
  private readonly dialingAddresses = new Set<string>();
  private nextUrl = 0;
  private refreshTimer: NodeJS.Timeout | undefined;
  private closed = false;
  /** The client certificate, key and hub CA of the next dials; replaced by updateTls (a reload or a renewal). */
  private tls: TunnelTls;

  constructor(
    private readonly config: AgentConfig,
    private readonly onOpen: (incoming: IncomingOpen, log: Logger) => void,
    private readonly log: Logger,
    /** The jitter source of the backoff (tests fix it). */
    private readonly random: () => number = Math.random,
  ) {
    super();
    this.tls = { cert: config.cert, key: config.key, ca: config.ca };
    this.backoff = new Backoff(config.backoff.initialMs, config.backoff.maxMs, random);
    this.rebalance = new Backoff(config.backoff.initialMs, Math.min(config.backoff.maxMs, REBALANCE_MAX_MS), random);
    this.sources = config.servers.map((text) => {
      const source = parseServerSource(text);
      if (typeof source === 'string') throw new Error(`--server: ${source}`);
      return source;
    });
    this.lookup = dnsLookup(config.dnsServers);
    this.endpoints = this.sources.flatMap((source) => (source.kind === 'url' ? [{ url: source.url, source }] : []));
  }

  start(): void {
    if (!this.sources.some((s) => s.kind === 'dns')) return this.ensure(0);
    void this.refresh();
    this.refreshTimer = setInterval(() => void this.refresh(), this.config.dnsRefreshMs ?? Defaults.dnsRefreshMs);
  }

  /** Looks the dns:/// names up again, then dials any address not yet held. */
  private async refresh(): Promise<void> {
    try {
      const endpoints = await resolveEndpoints(this.sources, this.lookup);
      const before = this.endpoints.map((e) => e.url).join(' ');
      this.endpoints = endpoints;
      const now = endpoints.map((e) => e.url).join(' ');
      if (now !== before) this.log.info({ endpoints: endpoints.map((e) => e.url) }, 'server endpoints changed');
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'could not resolve the servers; keeping the last answer');
    }
    this.ensure(0);
  }

  /** Tunnels wanted: one per address endpoint, plus the replicas behind URL endpoints. */
  private wanted(): number {
    const addresses = this.endpoints.filter((e) => e.source.kind === 'dns').length;
    const urls = this.endpoints.length - addresses;
    return addresses + (urls > 0 ? Math.max(urls, this.reportedCount) : 0);
  }

  /** The next endpoint to dial: an address not held or being dialed, else the next URL in turn. */
  private pick(): Endpoint | undefined {
    const held = new Set([...this.live.values()].map((l) => l.url));
    const free = this.endpoints.find((e) => e.source.kind === 'dns' && !held.has(e.url) && !this.dialingAddresses.has(e.url));
    if (free) return free;
    const urls = this.endpoints.filter((e) => e.source.kind === 'url');
    return urls.length > 0 ? urls[this.nextUrl++ % urls.length] : undefined;
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

  /** Dials as many new tunnels as are missing, after `delayMs` (each picks its endpoint then). */
  private ensure(delayMs: number): void {
    if (this.closed) return;
    const missing = this.wanted() - this.live.size - this.dialing;
    for (let i = 0; i < missing; i++) {
      this.dialing++;
      this.later(delayMs, () => {
        const endpoint = this.closed ? undefined : this.pick();
        if (!endpoint) return void this.dialing--;
        this.dial(endpoint);
      });
    }
  }

  private later(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }

  /** One dial attempt; it ends (once, see DialAttempt) by scheduling what is still missing. */
  private dial(endpoint: Endpoint): void {
    const url = endpoint.url;
    if (endpoint.source.kind === 'dns') this.dialingAddresses.add(url);
    const attempt = new DialAttempt((nextDelayMs) => {
      this.dialing--;
      this.dialingAddresses.delete(url);
      this.ensure(nextDelayMs);
    });
    if (this.closed) return void attempt.to('failed');
    const ws = this.openWebSocket(endpoint);
    this.sockets.add(ws);
    let serverId = '';
    let count = 1;
    let pingIntervalMs: number | undefined;
    ws.once('upgrade', (res: IncomingMessage) => {
      serverId = String(res.headers[H.serverId] ?? '');
      count = Number(res.headers[H.serverCount] ?? 1) || 1;
      pingIntervalMs = advertisedPingInterval(res.headers[H.pingInterval]);
    });
    ws.once('unexpected-response', (req: ClientRequest, res: IncomingMessage) => this.onAnswered(attempt, url, ws, req, res));
    ws.on('error', (err) =>
      attempt.to('failed', () => {
        const delay = this.backoff.next();
        this.log.warn({ server: url, err: err.message, retryInMs: delay }, 'could not reach server');
        return delay;
      }),
    );
    ws.once('open', () => this.onOpened(attempt, endpoint, ws, { serverId, count, pingIntervalMs }));
    ws.once('close', () => {
      this.sockets.delete(ws);
      // After an error this changes nothing: the error drew the wait.
      attempt.to('failed', () => this.backoff.next());
    });
  }

  /** New certificate, key and CA for the tunnels dialed from now on; tunnels open now keep theirs. */
  updateTls(tls: TunnelTls): void {
    this.tls = { ...tls };
  }

  /** The registration headers of a dial: who this agent is, and the replicas it holds already. */
  private registrationHeaders(): Record<string, string> {
    const c = this.config;
    const headers: Record<string, string> = {
      [H.cluster]: c.cluster,
      [H.agentId]: c.agentId,
      [H.allowDest]: c.allowDest.join(','),
    };
    if (c.apiserverCA) headers[H.apiserverCA] = Buffer.from(c.apiserverCA, 'utf8').toString('base64');
    if (c.apiserverTokenFile) headers[H.l7] = '1';
    if (this.live.size > 0) headers[H.heldServers] = [...this.live.keys()].join(',');
    return headers;
  }

  private openWebSocket(endpoint: Endpoint): WebSocket {
    // ws hands its options on to tls.connect, which takes a ready context:
    // made once for the certificate, not at every dial (a reconnect storm
    // would parse the key each time).
    const options: ClientOptions & Pick<ConnectionOptions, 'secureContext'> = {
      secureContext: clientContext(this.tls),
      headers: this.registrationHeaders(),
      perMessageDeflate: false,
      maxPayload: Defaults.maxWsPayload,
      handshakeTimeout: 10_000,
      // An address from DNS is checked against the name it was found under.
      ...(endpoint.servername ? { servername: endpoint.servername } : {}),
      // Masking guards plaintext WebSockets against cache poisoning by
      // intermediaries; inside TLS it only costs a copy of every byte. A zero
      // mask makes ws skip it.
      generateMask: zeroMask,
    };
    return new WebSocket(new URL(AGENT_PATH, endpoint.url), SUBPROTOCOL, options);
  }

  /** The server answered the handshake with an HTTP status instead of 101. */
  private onAnswered(attempt: DialAttempt, url: string, ws: WebSocket, req: ClientRequest, res: IncomingMessage): void {
    if (res.statusCode === 409) {
      // A replica this agent holds already (behind a balancer): try again soon.
      req.destroy();
      this.sockets.delete(ws);
      attempt.to('failed', () => {
        const delay = this.rebalance.next();
        this.log.debug({ server: url, serverId: res.headers[H.serverId], retryInMs: delay }, 'landed on a server already held');
        return delay;
      });
      return;
    }
    const retryAfter = res.statusCode === 503 ? retryAfterMs(res.headers['retry-after'], this.random) : undefined;
    if (retryAfter !== undefined) {
      // The server is busy (too many agents registering at once): wait as long as it asks, at least.
      req.destroy();
      this.sockets.delete(ws);
      attempt.to('failed', () => {
        const delay = Math.max(retryAfter, this.backoff.next());
        this.log.info({ server: url, retryInMs: delay }, 'server busy; dialing again after its Retry-After');
        return delay;
      });
      return;
    }
    attempt.to('answered');
    let body = '';
    res.setEncoding('utf8');
    res.on('data', (d: string) => (body += d.slice(0, 500)));
    res.once('end', () => {
      this.log.error({ server: url, status: res.statusCode, reason: body.trim() }, 'server refused registration');
      req.destroy();
      this.sockets.delete(ws);
      // The operator has to fix this (certificate, cluster name): retry slowly.
      attempt.to('failed', () => this.backoff.max());
    });
  }

  /** The handshake completed: a tunnel to a replica not held yet, else closed at once. */
  private onOpened(attempt: DialAttempt, endpoint: Endpoint, ws: WebSocket, answer: ServerAnswer): void {
    const { serverId, count } = answer;
    // The session must exist now: the server's first frames may have
    // arrived together with the 101 answer.
    if (this.closed) {
      ws.close(1001, 'agent stopping');
      return void attempt.to('open');
    }
    if (endpoint.source.kind === 'url') this.reportedCount = count;
    if (!serverId || this.live.has(serverId)) {
      ws.close(1000, 'already connected to this server');
      // Expected behind a balancer: try again soon, without the long waits of a failure.
      attempt.to('open', () => {
        const delay = this.rebalance.next();
        this.log.debug({ server: endpoint.url, serverId, retryInMs: delay }, 'landed on a server already held');
        return delay;
      });
      return;
    }
    this.attach(endpoint.url, answer, ws);
    attempt.to('open');
  }

  private attach(url: string, { serverId, pingIntervalMs }: ServerAnswer, ws: WebSocket): void {
    // The server's interval, so that an idle tunnel carries the server's PINGs
    // alone; an interval given to this agent comes first.
    const session = new Session(new WsTransport(ws), {
      role: 'agent',
      ...(pingIntervalMs !== undefined ? { pingIntervalMs } : {}),
      ...this.config.session,
    });
    const log = this.log.child({ serverId, server: url });
    const live: LiveSession = { serverId, url, session };
    this.live.set(serverId, live);
    this.rebalance.reset();
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
      // With dns:/// servers, look again first: a replica that drains is usually leaving.
      if (this.refreshTimer) void this.refresh();
      else this.ensure(0);
    });
    session.once('close', (err?: Error) => {
      clearTimeout(stable);
      this.draining.delete(session);
      if (this.live.get(serverId) === live) this.live.delete(serverId);
      const retryInMs = this.closed ? 0 : this.backoff.next();
      log.info({ reason: err?.message ?? 'closed', ...(this.closed ? {} : { retryInMs }) }, 'tunnel down');
      this.emit('disconnect', live);
      this.ensure(retryInMs);
      // A replica that went away may be gone from DNS too.
      if (!this.closed && this.refreshTimer) void this.refresh();
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
    clearInterval(this.refreshTimer);
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }
}
