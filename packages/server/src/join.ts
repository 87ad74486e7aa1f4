import { X509Certificate, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { PeerCertificate } from 'node:tls';
import client from 'prom-client';
import {
  MAX_CSR_BYTES,
  MAX_JOIN_TOKEN_LENGTH,
  RENEW_TARGET,
  Reasons,
  TunnelError,
  isValidAgentId,
  isValidClusterName,
  issueAgentCertForKey,
  joinIdOf,
  parseOriginForm,
  publicKeyOfCsr,
  publicKeyOfPrivate,
  publicKeysOf,
  verifyJoinToken,
  type IncomingOpen,
  type Logger,
  type MuxStream,
  type Pem,
  type Reason,
  type Session,
} from '@kubetunnel/shared';
import type { ServerMetrics } from './metrics.js';
import type { AgentTunnel } from './registry.js';

/** Where agents without a certificate ask for one, on the agent port. */
export const JOIN_PATH = '/join';
/** Default lifetime of the agent certificates the server signs. */
export const DEFAULT_AGENT_CERT_TTL_MS = 30 * 24 * 3600 * 1000;
/** Longest join request body read (a token and a certificate request). */
const MAX_JOIN_BODY = MAX_JOIN_TOKEN_LENGTH + MAX_CSR_BYTES + 1024;
/** How long a join request body or a renewal request may take to arrive. */
const BODY_TIMEOUT_MS = 10_000;
/** setTimeout's longest delay; longer waits are made of several. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export interface JoinOptions {
  /** PEM of the client CA bundle (--client-ca): tokens must be signed by one of its keys. */
  clientCA: string;
  /** PEM of the client CA key (--client-ca-key): joins and renewals are on when set. */
  clientCaKey?: string;
  /** A file of revoked token ids, one a line ('#' starts a comment), reloaded when it changes. */
  revocationsFile?: string;
  /** Lifetime of the agent certificates signed here. */
  agentCertTtlMs?: number;
  /** How often the revocation file is looked at (default 1 s). */
  revocationsPollMs?: number;
}

type Refusal = { reason: Reason; message: string };

interface Tracked {
  tunnel: AgentTunnel;
  notAfter: number;
  timer: NodeJS.Timeout | undefined;
  joinId: string | undefined;
  renewing: boolean;
}

/** A revocation file's token ids. */
export function parseRevocations(text: string): Set<string> {
  const ids = new Set<string>();
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    if (line) ids.add(line.toLowerCase());
  }
  return ids;
}

/**
 * Agent certificates on the server: the join endpoint (a join token and a
 * certificate request in, a short-lived agent certificate bound to the
 * token's cluster out), renewal over a live tunnel, and the expiry of every
 * tunnel's certificate (a tunnel ends when its certificate does).
 *
 * Uses of a token are counted by this replica alone: a token that allows N
 * uses lets N agents join through each replica.
 */
export class AgentCertificates {
  /** Joins and renewals are on (the client CA key was given). */
  readonly enabled: boolean;
  private readonly signer: Pem | undefined;
  private readonly caKeys: KeyObject[];
  private readonly ttlMs: number;
  private revoked = new Set<string>();
  private readonly uses = new Map<string, { count: number; expiresAt: number }>();
  private readonly tracked = new Map<Session, Tracked>();
  private readonly joins: client.Counter<'result'>;
  private readonly onRevocationsChange: ((cur: fs.Stats, prev: fs.Stats) => void) | undefined;

  constructor(
    private readonly opts: JoinOptions,
    metrics: ServerMetrics,
    private readonly log: Logger,
  ) {
    this.ttlMs = opts.agentCertTtlMs ?? DEFAULT_AGENT_CERT_TTL_MS;
    this.caKeys = publicKeysOf(opts.clientCA);
    if (opts.clientCaKey) {
      const pub = publicKeyOfPrivate(opts.clientCaKey).export({ type: 'spki', format: 'der' });
      const certs = [...opts.clientCA.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)].map((m) => m[0]);
      const own = certs.find((pem) => new X509Certificate(pem).publicKey.export({ type: 'spki', format: 'der' }).equals(pub));
      if (!own) throw new Error('the client CA key belongs to no certificate of the client CA bundle');
      this.signer = { cert: own, key: opts.clientCaKey };
    }
    this.enabled = this.signer !== undefined;
    this.joins = new client.Counter({
      name: 'kubetunnel_agent_joins_total',
      help: 'Join and renewal requests, by result (joined, renewed, or the refusal reason).',
      labelNames: ['result'],
      registers: [metrics.registry],
    });
    if (opts.revocationsFile) {
      const file = opts.revocationsFile;
      this.loadRevocations(file);
      this.onRevocationsChange = (cur, prev) => {
        if (cur.mtimeMs !== prev.mtimeMs || cur.size !== prev.size || cur.ino !== prev.ino) this.loadRevocations(file);
      };
      fs.watchFile(file, { interval: opts.revocationsPollMs ?? 1000, persistent: false }, this.onRevocationsChange);
    }
  }

  private loadRevocations(file: string): void {
    try {
      this.revoked = parseRevocations(fs.readFileSync(file, 'utf8'));
      this.log.info({ file, revoked: this.revoked.size }, 'join token revocations loaded');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        this.revoked = new Set();
        this.log.info({ file }, 'no join token revocation file yet; none revoked');
      } else this.log.warn({ file, err: (err as Error).message }, 'cannot read the join token revocations; keeping the previous ones');
    }
  }

  // ------------------------------------------------------------ joining

  /** Answers POST /join; false for any other path (the gateway answers it). */
  handleRequest(req: IncomingMessage, res: ServerResponse): boolean {
    if (parseOriginForm(req.url)?.path !== JOIN_PATH) return false;
    req.on('error', () => {});
    if (req.method !== 'POST') {
      res.writeHead(405, { 'Content-Type': 'text/plain', Allow: 'POST', Connection: 'close' });
      res.end(`agents join with POST ${JOIN_PATH}\n`);
      return true;
    }
    if (!this.enabled) return this.refuse(req, res, { reason: 'JOIN_DISABLED', message: Reasons.JOIN_DISABLED.text }), true;
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => {
      res.writeHead(408, { 'Content-Type': 'text/plain', Connection: 'close' });
      res.end(`join request body did not arrive within ${BODY_TIMEOUT_MS / 1000} s\n`);
      req.destroy();
    }, BODY_TIMEOUT_MS);
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_JOIN_BODY) {
        clearTimeout(timer);
        res.writeHead(413, { 'Content-Type': 'text/plain', Connection: 'close' });
        res.end(`join request larger than ${MAX_JOIN_BODY} bytes\n`);
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('close', () => clearTimeout(timer));
    req.on('end', () => {
      clearTimeout(timer);
      if (size > MAX_JOIN_BODY || res.headersSent) return;
      this.join(req, res, Buffer.concat(chunks));
    });
    return true;
  }

  private refuse(req: IncomingMessage, res: ServerResponse, r: Refusal, fields: Record<string, unknown> = {}): void {
    this.joins.inc({ result: r.reason });
    this.log.warn({ reason: r.reason, err: r.message, remote: req.socket.remoteAddress, ...fields }, 'join refused');
    res.writeHead(Reasons[r.reason].http, { 'Content-Type': 'text/plain', 'X-Kubetunnel-Reason': r.reason, Connection: 'close' });
    res.end(r.message.replace(/[\r\n]+/g, ' ') + '\n');
  }

  private join(req: IncomingMessage, res: ServerResponse, body: Buffer): void {
    let request: Record<string, unknown>;
    try {
      const v: unknown = JSON.parse(body.toString('utf8'));
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
      request = v as Record<string, unknown>;
    } catch {
      res.writeHead(400, { 'Content-Type': 'text/plain', Connection: 'close' });
      res.end('join request is not a JSON object {"token", "csr", "cluster", "agentId"}\n');
      return;
    }
    const { token, csr, cluster, agentId } = request;
    if (typeof cluster !== 'string' || !isValidClusterName(cluster) || typeof agentId !== 'string' || !isValidAgentId(agentId)) {
      res.writeHead(400, { 'Content-Type': 'text/plain', Connection: 'close' });
      res.end('join request needs a valid cluster name and agent id\n');
      return;
    }
    const checked = verifyJoinToken(typeof token === 'string' ? token : '', this.caKeys);
    if (!checked.ok) return this.refuse(req, res, checked, { cluster, agentId });
    const claim = checked.claim;
    const fields = { cluster, agentId, tokenId: claim.id };
    if (this.revoked.has(claim.id)) return this.refuse(req, res, { reason: 'TOKEN_REVOKED', message: `join token ${claim.id} has been revoked` }, fields);
    if (claim.cluster !== cluster)
      return this.refuse(req, res, { reason: 'TOKEN_WRONG_CLUSTER', message: `join token ${claim.id} is for cluster ${claim.cluster}, not ${cluster}` }, fields);
    this.pruneUses();
    const used = this.uses.get(claim.id)?.count ?? 0;
    if (claim.uses !== undefined && used >= claim.uses)
      return this.refuse(
        req,
        res,
        { reason: 'TOKEN_USED_UP', message: `join token ${claim.id} allows ${claim.uses} join(s) per server and has been used ${used} time(s) on this one` },
        fields,
      );
    let publicKey: KeyObject;
    try {
      publicKey = publicKeyOfCsr(typeof csr === 'string' ? csr : '');
    } catch (err) {
      return this.refuse(req, res, { reason: 'BAD_CSR', message: (err as Error).message }, fields);
    }
    const cert = issueAgentCertForKey(this.signer!, { publicKey, cluster, joinId: claim.id, validMs: this.ttlMs });
    this.uses.set(claim.id, { count: used + 1, expiresAt: claim.expiresAt * 1000 });
    const notAfter = new X509Certificate(cert).validTo;
    this.joins.inc({ result: 'joined' });
    this.log.info({ ...fields, notAfter: new Date(notAfter).toISOString() }, 'agent joined: certificate issued');
    res.writeHead(200, { 'Content-Type': 'application/json', Connection: 'close' });
    res.end(JSON.stringify({ cert, notAfter: new Date(notAfter).toISOString() }));
  }

  /** Forgets the uses of tokens that have expired (the map holds only live tokens). */
  private pruneUses(): void {
    const now = Date.now();
    for (const [id, u] of this.uses) if (u.expiresAt <= now) this.uses.delete(id);
  }

  // ------------------------------------------------------------ live tunnels

  /**
   * Follows a registered tunnel: it is closed (CERT_EXPIRED) when its
   * certificate expires, unless the agent renews it over the tunnel first.
   */
  attach(tunnel: AgentTunnel, session: Session, peer: PeerCertificate): void {
    const t: Tracked = { tunnel, notAfter: new Date(peer.valid_to).getTime(), timer: undefined, joinId: joinIdOf(peer.subjectaltname), renewing: false };
    this.tracked.set(session, t);
    this.schedule(session, t);
    session.on('open', (incoming: IncomingOpen) => this.onOpen(session, t, incoming));
    session.once('close', () => {
      clearTimeout(t.timer);
      this.tracked.delete(session);
    });
  }

  private schedule(session: Session, t: Tracked): void {
    clearTimeout(t.timer);
    const left = t.notAfter - Date.now();
    if (left > MAX_TIMER_MS) {
      t.timer = setTimeout(() => this.schedule(session, t), MAX_TIMER_MS);
      return;
    }
    t.timer = setTimeout(() => {
      const at = new Date(t.notAfter).toISOString();
      t.tunnel.log.warn({ notAfter: at }, 'agent certificate expired; closing its tunnel');
      session.close(new TunnelError('CERT_EXPIRED', `agent certificate expired at ${at}`));
    }, Math.max(0, left));
  }

  /** An OPEN from the agent: only a certificate renewal is one it may make. */
  private onOpen(session: Session, t: Tracked, incoming: IncomingOpen): void {
    if (incoming.request.target !== RENEW_TARGET) return incoming.reject('BAD_OPEN', 'agents open no streams but certificate renewals');
    const refuse = (reason: Reason, message: string) => {
      this.joins.inc({ result: reason });
      t.tunnel.log.warn({ reason, err: message }, 'certificate renewal refused');
      incoming.reject(reason, message);
    };
    if (!this.enabled) return refuse('JOIN_DISABLED', Reasons.JOIN_DISABLED.text);
    if (t.joinId !== undefined && this.revoked.has(t.joinId))
      return refuse('TOKEN_REVOKED', `the certificate came from join token ${t.joinId}, which has been revoked: not renewed`);
    if (t.renewing) return refuse('TOO_MANY_STREAMS', 'a renewal is already under way on this tunnel');
    let stream: MuxStream;
    try {
      stream = incoming.accept();
    } catch {
      return;
    }
    t.renewing = true;
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => stream.destroy(new TunnelError('IDLE_TIMEOUT', 'renewal request did not arrive in time')), BODY_TIMEOUT_MS);
    const answer = (body: object) => {
      clearTimeout(timer);
      stream.end(JSON.stringify(body));
    };
    stream.on('error', () => {});
    stream.on('close', () => {
      clearTimeout(timer);
      t.renewing = false;
    });
    stream.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_CSR_BYTES) {
        clearTimeout(timer);
        stream.destroy(new TunnelError('BAD_CSR', `certificate request larger than ${MAX_CSR_BYTES} bytes`));
        return;
      }
      chunks.push(c);
    });
    stream.on('end', () => {
      if (size > MAX_CSR_BYTES) return;
      let publicKey: KeyObject;
      try {
        publicKey = publicKeyOfCsr(Buffer.concat(chunks).toString('utf8'));
      } catch (err) {
        this.joins.inc({ result: 'BAD_CSR' });
        t.tunnel.log.warn({ reason: 'BAD_CSR', err: (err as Error).message }, 'certificate renewal refused');
        return answer({ reason: 'BAD_CSR', message: (err as Error).message });
      }
      const cert = issueAgentCertForKey(this.signer!, {
        publicKey,
        cluster: t.tunnel.cluster,
        ...(t.joinId !== undefined ? { joinId: t.joinId } : {}),
        validMs: this.ttlMs,
      });
      // This tunnel now lives as long as the certificate it was given.
      t.notAfter = new Date(new X509Certificate(cert).validTo).getTime();
      this.schedule(session, t);
      this.joins.inc({ result: 'renewed' });
      const notAfter = new Date(t.notAfter).toISOString();
      t.tunnel.log.info({ notAfter }, 'agent certificate renewed');
      answer({ cert, notAfter });
    });
  }

  /** When the certificate of a live tunnel expires (tests and status). */
  expiryOf(session: Session): Date | undefined {
    const t = this.tracked.get(session);
    return t ? new Date(t.notAfter) : undefined;
  }

  close(): void {
    if (this.opts.revocationsFile && this.onRevocationsChange) fs.unwatchFile(this.opts.revocationsFile, this.onRevocationsChange);
    for (const t of this.tracked.values()) clearTimeout(t.timer);
    this.tracked.clear();
  }
}
