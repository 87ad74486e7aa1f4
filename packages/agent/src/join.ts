import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import {
  AGENT_CERT_BACKDATE_MS,
  AGENT_URI_PREFIX,
  RENEW_TARGET,
  TunnelError,
  caCertHash,
  createCsr,
  newAgentKey,
  replaceFile,
  type Logger,
} from '@kubetunnel/shared';
import { Backoff } from './backoff.js';
import type { Connector } from './connector.js';
import { dnsLookup, parseServerSource, resolveEndpoints, type Endpoint } from './discovery.js';

/**
 * Joining with a token: the agent finds the hub CA in the server's TLS chain
 * by its public-key hash (--ca-cert-hash, as kubeadm's discovery does), sends
 * a certificate request for a key it made with the join token, and keeps the
 * certificate it gets, its key and the hub CA in its state directory. It
 * renews the certificate over its tunnels at two thirds of its lifetime.
 */

export interface JoinSettings {
  /** The join token (--join-token); without it only a stored certificate can be used. */
  token?: string;
  /** sha256:HEX of the hub CA's SubjectPublicKeyInfo (--ca-cert-hash). */
  caCertHash: string;
  /** Where the key, certificate and hub CA are kept (--state-dir). */
  stateDir: string;
}

export interface Credentials {
  cert: string;
  key: string;
  ca: string;
}

/** File names in the state directory. */
export const STATE_FILES = { cert: 'agent.crt', key: 'agent.key', ca: 'hub-ca.crt' } as const;
/** Longest join or renewal answer read. */
const MAX_ANSWER_BYTES = 64 * 1024;
const REQUEST_TIMEOUT_MS = 10_000;

/** The server refused a join: its status and one-line reason. */
export class JoinRefused extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

/** The validity of a certificate (PEM), in ms since the epoch. */
export function validityOf(pem: string): { notBefore: number; notAfter: number } {
  const x = new X509Certificate(pem);
  return { notBefore: new Date(x.validFrom).getTime(), notAfter: new Date(x.validTo).getTime() };
}

/** When a certificate should be renewed: two thirds into its lifetime (counted from its issuing). */
export function renewalTime(pem: string): number {
  const { notBefore, notAfter } = validityOf(pem);
  const issued = Math.min(notBefore + AGENT_CERT_BACKDATE_MS, notAfter);
  return issued + ((notAfter - issued) * 2) / 3;
}

/**
 * The credentials kept in `stateDir`, when they are usable: a certificate
 * for `cluster` that has not expired, its key, and a hub CA with the given
 * hash. Otherwise the reason they are not.
 */
export function loadStoredCredentials(stateDir: string, cluster: string, hash: string, now = Date.now()): Credentials | string {
  let creds: Credentials;
  try {
    creds = {
      cert: fs.readFileSync(path.join(stateDir, STATE_FILES.cert), 'utf8'),
      key: fs.readFileSync(path.join(stateDir, STATE_FILES.key), 'utf8'),
      ca: fs.readFileSync(path.join(stateDir, STATE_FILES.ca), 'utf8'),
    };
  } catch {
    return `no stored certificate in ${stateDir}`;
  }
  try {
    const x = new X509Certificate(creds.cert);
    if (!(x.subjectAltName ?? '').split(', ').includes(`URI:${AGENT_URI_PREFIX}${cluster}`)) return `the stored certificate is not for cluster ${cluster}`;
    if (new Date(x.validTo).getTime() <= now) return `the stored certificate expired at ${new Date(x.validTo).toISOString()}`;
    if (caCertHash(creds.ca) !== hash) return 'the stored hub CA does not have the --ca-cert-hash given';
    tls.createSecureContext(creds);
  } catch (err) {
    return `the stored credentials do not load: ${(err as Error).message}`;
  }
  return creds;
}

/** Writes the credentials into `stateDir` (files mode 0600, the directory 0700). */
export function storeCredentials(stateDir: string, creds: Credentials): void {
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  replaceFile(path.join(stateDir, STATE_FILES.key), creds.key, 0o600);
  replaceFile(path.join(stateDir, STATE_FILES.cert), creds.cert, 0o600);
  replaceFile(path.join(stateDir, STATE_FILES.ca), creds.ca, 0o600);
}

interface Target {
  host: string;
  port: number;
  servername: string | undefined;
  label: string;
}

function targetOf(e: Endpoint): Target {
  const u = new URL(e.url);
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  const servername = e.servername ?? (net.isIP(host) ? undefined : host);
  return { host, port: Number(u.port || 443), servername, label: e.url };
}

/**
 * Connects without trusting anything yet, and returns the CA certificate of
 * the presented chain whose public-key hash is `hash` (PEM). The chain must
 * contain it; the connection that follows is verified against it by TLS.
 */
export function discoverHubCA(t: Target, hash: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: t.host,
      port: t.port,
      ...(t.servername ? { servername: t.servername } : {}),
      // Nothing is trusted on this connection: it only reads the chain, and sends nothing.
      rejectUnauthorized: false,
      ALPNProtocols: ['http/1.1'],
    });
    const timer = setTimeout(() => socket.destroy(new Error(`no TLS handshake with ${t.label} within ${REQUEST_TIMEOUT_MS / 1000} s`)), REQUEST_TIMEOUT_MS);
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      const chain: X509Certificate[] = [];
      let c: tls.DetailedPeerCertificate | undefined = socket.getPeerCertificate(true);
      const seen = new Set<string>();
      while (c && c.raw && !seen.has(c.fingerprint256)) {
        seen.add(c.fingerprint256);
        chain.push(new X509Certificate(c.raw));
        c = c.issuerCertificate;
      }
      socket.destroy();
      const ca = chain.find((x) => x.ca && caCertHash(x) === hash);
      if (!ca)
        return reject(
          new Error(
            `the server at ${t.label} presented no CA certificate with public-key hash ${hash} (it presented ${chain.length} certificate(s): ` +
              `${chain.map((x) => caCertHash(x)).join(', ') || 'none'}); refusing it: check --ca-cert-hash, or that the server certificate file holds the hub CA after the server certificate`,
          ),
        );
      resolve(ca.toString());
    });
  });
}

/** POST /join over TLS verified against the hub CA; the certificate issued, or JoinRefused. */
export function requestJoin(t: Target, hubCA: string, body: { token: string; csr: string; cluster: string; agentId: string }): Promise<string> {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = https.request({
      host: t.host,
      port: t.port,
      ...(t.servername ? { servername: t.servername } : {}),
      ca: hubCA,
      method: 'POST',
      path: '/join',
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) },
      timeout: REQUEST_TIMEOUT_MS,
      agent: false,
    });
    req.once('timeout', () => req.destroy(new Error(`no answer from ${t.label} within ${REQUEST_TIMEOUT_MS / 1000} s`)));
    req.once('error', (err) => {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      // A server with joins off asks every connection for a certificate at the handshake.
      if (/CERTIFICATE_REQUIRED|certificate required|ECONNRESET|EPIPE/i.test(`${code} ${err.message}`))
        reject(new Error(`the server at ${t.label} closed a connection without a client certificate (${err.message}): it does not accept join tokens (start it with --client-ca-key)`));
      else reject(err);
    });
    req.once('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        text += c;
        if (text.length > MAX_ANSWER_BYTES) req.destroy(new Error('join answer too large'));
      });
      res.once('end', () => {
        if (res.statusCode !== 200) {
          const reason = String(res.headers['x-kubetunnel-reason'] ?? '');
          return reject(new JoinRefused(res.statusCode ?? 0, reason, text.trim().split('\n')[0] ?? ''));
        }
        try {
          const answer = JSON.parse(text) as { cert?: unknown };
          if (typeof answer.cert !== 'string') throw new Error('no certificate');
          resolve(answer.cert);
        } catch (err) {
          reject(new Error(`the join answer is not a certificate: ${(err as Error).message}`));
        }
      });
    });
    req.end(data);
  });
}

export interface JoinTarget {
  servers: string[];
  dnsServers?: string[];
  cluster: string;
  agentId: string;
}

/** One join: every server endpoint in turn until one issues a certificate. */
export async function joinOnce(target: JoinTarget, settings: JoinSettings & { token: string }, log: Logger): Promise<Credentials> {
  const sources = target.servers.map((s) => {
    const source = parseServerSource(s);
    if (typeof source === 'string') throw new Error(`--server: ${source}`);
    return source;
  });
  const endpoints = await resolveEndpoints(sources, dnsLookup(target.dnsServers));
  if (endpoints.length === 0) throw new Error('no server address to join through');
  let last: Error = new Error('no server answered');
  for (const e of endpoints) {
    const t = targetOf(e);
    try {
      const ca = await discoverHubCA(t, settings.caCertHash);
      const key = newAgentKey();
      const cert = await requestJoin(t, ca, { token: settings.token, csr: createCsr(key), cluster: target.cluster, agentId: target.agentId });
      log.info({ server: t.label, notAfter: new Date(validityOf(cert).notAfter).toISOString() }, 'joined: agent certificate issued');
      return { cert, key, ca };
    } catch (err) {
      if (err instanceof JoinRefused) throw err;
      last = err as Error;
      log.warn({ server: t.label, err: last.message }, 'join through this server failed');
    }
  }
  throw last;
}

/**
 * The agent's credentials in join mode: the stored ones while they last,
 * else a join with the token, retried with backoff until it succeeds (each
 * refusal is logged with its status and reason). `stopped` ends the retries.
 */
export async function obtainCredentials(target: JoinTarget, settings: JoinSettings, log: Logger, stopped: () => boolean = () => false): Promise<Credentials | undefined> {
  const stored = loadStoredCredentials(settings.stateDir, target.cluster, settings.caCertHash);
  if (typeof stored !== 'string') {
    log.info({ stateDir: settings.stateDir, notAfter: new Date(validityOf(stored.cert).notAfter).toISOString() }, 'using the stored agent certificate');
    return stored;
  }
  if (!settings.token) throw new Error(`${stored}, and no --join-token to join with`);
  log.info({ stateDir: settings.stateDir, why: stored }, 'joining with the join token');
  const backoff = new Backoff(500, 30_000);
  for (;;) {
    if (stopped()) return undefined;
    try {
      const creds = await joinOnce(target, { ...settings, token: settings.token }, log);
      storeCredentials(settings.stateDir, creds);
      return creds;
    } catch (err) {
      const refused = err instanceof JoinRefused;
      const retryInMs = refused ? backoff.max() : backoff.next();
      if (refused) log.error({ status: err.status, reason: err.reason, err: err.message, retryInMs }, 'join refused by the server');
      else log.error({ err: (err as Error).message, retryInMs }, 'join failed');
      await new Promise((resolve) => setTimeout(resolve, retryInMs));
    }
  }
}

type RenewResult = { ok: true; cert: string } | { ok: false; reason: string; message: string };

/** Asks one tunnel's server for a certificate for the key of `csr`. */
async function renewOn(session: Connector['sessions'] extends () => Array<infer L> ? L : never, csr: string): Promise<RenewResult> {
  let stream;
  try {
    stream = await session.session.open({ kind: 'tcp', target: RENEW_TARGET }, { timeoutMs: REQUEST_TIMEOUT_MS });
  } catch (err) {
    return { ok: false, reason: err instanceof TunnelError ? err.reason : 'INTERNAL', message: (err as Error).message };
  }
  return new Promise((resolve) => {
    let text = '';
    const timer = setTimeout(() => stream.destroy(new TunnelError('IDLE_TIMEOUT', 'no renewal answer in time')), REQUEST_TIMEOUT_MS);
    stream.setEncoding('utf8');
    stream.on('data', (c: string) => {
      text += c;
      if (text.length > MAX_ANSWER_BYTES) stream.destroy(new TunnelError('PROTOCOL_ERROR', 'renewal answer too large'));
    });
    stream.once('error', (err) => {
      clearTimeout(timer);
      resolve({ ok: false, reason: err instanceof TunnelError ? err.reason : 'INTERNAL', message: err.message });
    });
    stream.once('end', () => {
      clearTimeout(timer);
      try {
        const answer = JSON.parse(text) as { cert?: unknown; reason?: unknown; message?: unknown };
        if (typeof answer.cert === 'string') resolve({ ok: true, cert: answer.cert });
        else resolve({ ok: false, reason: String(answer.reason ?? 'INTERNAL'), message: String(answer.message ?? 'no certificate in the answer') });
      } catch {
        resolve({ ok: false, reason: 'PROTOCOL_ERROR', message: 'renewal answer is not JSON' });
      }
    });
    stream.end(csr);
  });
}

/**
 * Renews the agent certificate at two thirds of its lifetime, with a fresh
 * key, over every tunnel (one per server replica): each replica extends its
 * own tunnel to the new certificate's expiry; the newest certificate is kept
 * and used for the tunnels dialed from then on. Streams are not touched. A
 * refused renewal is logged and tried again while the certificate lasts;
 * when it expires, the agent joins again with its token, if it has one.
 */
export class CertRenewer {
  private timer: NodeJS.Timeout | undefined;
  private current: Credentials;
  private stopped = false;

  constructor(
    private readonly connector: Connector,
    private readonly apply: (creds: Credentials) => void,
    private readonly target: JoinTarget,
    private readonly settings: JoinSettings,
    initial: Credentials,
    private readonly log: Logger,
  ) {
    this.current = initial;
  }

  start(): void {
    this.scheduleRenewal();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private at(when: number, fn: () => void): void {
    clearTimeout(this.timer);
    if (this.stopped) return;
    // setTimeout's longest delay is about 24.8 days: longer waits are made of several.
    const delay = Math.max(0, when - Date.now());
    this.timer = setTimeout(() => (delay > 2 ** 31 - 1 ? this.at(when, fn) : fn()), Math.min(delay, 2 ** 31 - 1));
  }

  private scheduleRenewal(): void {
    const when = renewalTime(this.current.cert);
    this.log.info({ renewAt: new Date(when).toISOString(), notAfter: new Date(validityOf(this.current.cert).notAfter).toISOString() }, 'certificate renewal scheduled');
    this.at(when, () => void this.renew());
  }

  private async renew(): Promise<void> {
    const { notAfter } = validityOf(this.current.cert);
    const sessions = this.connector.sessions();
    const key = newAgentKey();
    const csr = createCsr(key);
    const results = await Promise.all(sessions.map((s) => renewOn(s, csr)));
    if (this.stopped) return;
    const certs = results.flatMap((r) => (r.ok ? [r.cert] : []));
    const refusals = results.flatMap((r, i) => (r.ok ? [] : [{ serverId: sessions[i]!.serverId, reason: r.reason, err: r.message }]));
    if (certs.length > 0) {
      // The one that lasts longest (each replica signs its own).
      const cert = certs.reduce((a, b) => (validityOf(b).notAfter > validityOf(a).notAfter ? b : a));
      this.current = { cert, key, ca: this.current.ca };
      try {
        storeCredentials(this.settings.stateDir, this.current);
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'cannot store the renewed certificate; it is used, but a restart would not find it');
      }
      this.apply(this.current);
      this.log.info(
        { notAfter: new Date(validityOf(cert).notAfter).toISOString(), tunnels: sessions.length, renewed: certs.length, ...(refusals.length ? { refusals } : {}) },
        'agent certificate renewed',
      );
      return this.scheduleRenewal();
    }
    const left = notAfter - Date.now();
    if (left <= 0) return this.expired(refusals);
    const retryAt = Date.now() + Math.max(1000, left / 3);
    this.log.warn(
      { refusals, tunnels: sessions.length, notAfter: new Date(notAfter).toISOString(), retryAt: new Date(Math.min(retryAt, notAfter)).toISOString() },
      sessions.length === 0 ? 'certificate renewal needs a tunnel; none is up: serving on until the certificate expires' : 'certificate renewal refused: serving on until the certificate expires',
    );
    if (retryAt < notAfter) this.at(retryAt, () => void this.renew());
    else this.at(notAfter, () => this.expired(refusals));
  }

  private expired(refusals: Array<{ reason: string; err: string }>): void {
    const at = new Date(validityOf(this.current.cert).notAfter).toISOString();
    this.log.error(
      { notAfter: at, lastRefusals: refusals },
      `agent certificate expired at ${at} without renewal${refusals[0] ? ` (${refusals[0].reason}: ${refusals[0].err})` : ''}; the servers close its tunnels`,
    );
    if (!this.settings.token) return;
    void obtainCredentials(this.target, this.settings, this.log, () => this.stopped).then(
      (creds) => {
        if (!creds || this.stopped) return;
        this.current = creds;
        this.apply(creds);
        this.scheduleRenewal();
      },
      (err: unknown) => this.log.error({ err: (err as Error).message }, 'cannot join again'),
    );
  }
}
