import { constants, randomBytes } from 'node:crypto';
import https from 'node:https';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { WebSocketServer, type WebSocket } from 'ws';
import {
  AGENT_PATH,
  Defaults,
  Reasons,
  RegistrationHeaders as H,
  SUBPROTOCOL,
  Session,
  WsTransport,
  agentClusterOf,
  isValidAgentId,
  isValidClusterName,
  isValidHostPort,
  parseOriginForm,
  SERVER_TLS_POLICY,
  reasonOf,
  respondRaw,
  type Logger,
  type Reason,
} from '@kubetunnel/shared';
import type { ServerConfig } from './config.js';
import { httpAnswer, refusal, refused, type Outcome, type Refusal } from './refusal.js';
import type { AgentCertificates } from './join.js';
import { HandshakeLimit, defaultMaxConcurrentHandshakes } from './handshake-limit.js';
import type { ServerMetrics } from './metrics.js';
import type { AgentTunnel, ClusterRegistry } from './registry.js';
import { SocketSet } from './sockets.js';

/**
 * The agent gateway's TLS policy: that of every listener, without session
 * tickets. An agent never resumes a TLS session (each dial is a whole
 * handshake with its certificate), and the two tickets a TLS 1.3 server
 * makes per handshake were a quarter of its handshake CPU here (2.2-2.5 ms
 * a handshake with them, 1.6-1.8 without), paid again for each of 10,000
 * agents when they all reconnect.
 */
export const GATEWAY_TLS_POLICY = Object.freeze({ ...SERVER_TLS_POLICY, secureOptions: constants.SSL_OP_NO_TICKET });

/** Reasons a tunnel ends because the agent broke a rule or a bound (logged as warnings). */
const MISBEHAVIOUR = new Set<Reason | 'closed'>(['PROTOCOL_ERROR', 'FLOW_CONTROL', 'CONTROL_QUEUE_FULL', 'PING_FLOOD', 'PEER_NOT_READING']);

interface Claim {
  cluster: string;
  agentId: string;
  allowDest: string[];
  apiserverCA?: string;
  l7: boolean;
}


function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? undefined : v;
}

/** The registrations metric's result for a refused agent: `forbidden` (its certificate is not entitled to the claim), else `invalid`. */
export function registrationResult(r: Refusal): 'forbidden' | 'invalid' {
  return Reasons[r.reason].http === 403 ? 'forbidden' : 'invalid';
}

/** Reads and checks a registration's claim, and that the certificate is entitled to it. */
export function checkRegistration(req: IncomingMessage, cert: PeerCertificate): Outcome<{ claim: Claim }> {
  const cluster = header(req, H.cluster) ?? '';
  const agentId = header(req, H.agentId) ?? '';
  if (!isValidClusterName(cluster)) return refused('BAD_REQUEST', 'missing or invalid cluster name');
  if (!isValidAgentId(agentId)) return refused('BAD_REQUEST', 'missing or invalid agent id');
  const bound = agentClusterOf(cert);
  if (bound === undefined) return refused('FORBIDDEN', 'not an agent certificate');
  if (bound !== cluster) return refused('FORBIDDEN', `certificate is for cluster ${bound}, not ${cluster}`);
  const allowDest = (header(req, H.allowDest) ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  const bad = allowDest.find((d) => !isValidHostPort(d));
  if (bad !== undefined) return refused('BAD_REQUEST', `invalid allow-dest entry ${JSON.stringify(bad)}`);
  const claim: Claim = { cluster, agentId, allowDest, l7: header(req, H.l7) === '1' };
  const ca = header(req, H.apiserverCA);
  if (ca) {
    const pem = Buffer.from(ca, 'base64').toString('utf8');
    if (!pem.startsWith('-----BEGIN CERTIFICATE-----')) return refused('BAD_REQUEST', 'apiserver CA is not a PEM certificate');
    claim.apiserverCA = pem;
  }
  return { ok: true, claim };
}

/**
 * Puts an agent's tunnel in the registry and follows it to its end: the one
 * registration path of kubetunnel agents and of ANP proxy-agents (counted in
 * registrations, and disconnects by reason, alike). A tunnel with the same
 * agent id that it replaces is drained.
 */
export function registerTunnel(registry: ClusterRegistry, metrics: ServerMetrics, graceMs: number, tunnel: AgentTunnel, details: Record<string, unknown> = {}): void {
  const { log, session } = tunnel;
  const replaced = registry.register(tunnel);
  metrics.registrations.inc({ result: 'ok' });
  log.info(details, 'agent registered');
  if (replaced) {
    replaced.log.info('agent reconnected with the same id; closing the older tunnel');
    void replaced.session.drain(graceMs);
  }
  session.on('goaway', () => log.info('agent is draining'));
  session.on('streamError', (streamId: number, err: Error) =>
    log.warn({ streamId, err: err.message }, 'stream failed while receiving; reset that stream only'),
  );
  session.on('close', (err?: Error) => {
    registry.unregister(tunnel);
    const reason = err ? reasonOf(err) : 'closed';
    metrics.disconnects.inc({ reason });
    log[MISBEHAVIOUR.has(reason) ? 'warn' : 'info']({ reason, err: err?.message ?? 'closed' }, 'agent disconnected');
  });
}

/**
 * The agent gateway: HTTPS with a required client certificate, where agents
 * register by upgrading to a WebSocket tunnel.
 */
export class AgentGateway {
  readonly server: https.Server;
  private readonly wss: WebSocketServer;
  private readonly sockets = new SocketSet();
  /** Bounds registrations in progress at once (reconnect storms). */
  readonly handshakes: HandshakeLimit;

  constructor(
    private readonly config: ServerConfig,
    private readonly registry: ClusterRegistry,
    private readonly metrics: ServerMetrics,
    private readonly log: Logger,
    /** Joins, renewals and certificate expiry of tunnels. */
    private readonly certs?: AgentCertificates,
  ) {
    this.server = https.createServer({
      ...GATEWAY_TLS_POLICY,
      cert: config.cert,
      key: config.key,
      ca: config.ca,
      requestCert: true,
      // With joins on, an agent without a certificate may reach POST /join;
      // every upgrade is then checked for an authorized certificate below.
      rejectUnauthorized: !certs?.enabled,
      maxHeaderSize: config.maxHeaderSize,
      ALPNProtocols: ['http/1.1'],
    });
    this.wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      maxPayload: Defaults.maxWsPayload,
      handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
    });
    this.wss.on('headers', (headers) => {
      headers.push(
        `${H.serverId}: ${config.serverId}`,
        `${H.serverCount}: ${config.serverCount}`,
        `${H.pingInterval}: ${config.session?.pingIntervalMs ?? Defaults.pingIntervalMs}`,
      );
    });
    this.handshakes = new HandshakeLimit(this.server, config.maxConcurrentHandshakes ?? defaultMaxConcurrentHandshakes(), metrics.registry, log);
    this.server.on('secureConnection', (s) => this.sockets.add(s));
    this.server.on('tlsClientError', (err) => this.log.debug({ err: err.message }, 'agent TLS handshake refused'));
    this.server.on('request', (req: IncomingMessage, res) => {
      if (this.certs?.handleRequest(req, res)) return;
      res.writeHead(426, { 'Content-Type': 'text/plain', Upgrade: 'websocket' });
      res.end(`agents connect with a WebSocket upgrade to ${AGENT_PATH}\n`);
    });
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      if (!this.handshakes.admit(req.socket)) return;
      this.onUpgrade(req, socket, head);
      this.handshakes.finished(req.socket);
    });
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => {});
    const refuse = (r: Refusal) => {
      this.metrics.registrations.inc({ result: registrationResult(r) });
      const { status, headers } = httpAnswer(r, 'origin');
      this.log.warn({ status, reason: r.reason, message: r.message, remote: req.socket.remoteAddress }, 'agent registration refused');
      respondRaw(socket, status, r.message, headers);
    };
    if (parseOriginForm(req.url)?.path !== AGENT_PATH) return refuse(refusal('NOT_FOUND', `agents register at ${AGENT_PATH}`));
    const offered = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((s) => s.trim());
    if (!offered.includes(SUBPROTOCOL)) return refuse(refusal('BAD_REQUEST', `unsupported tunnel protocol; this server speaks ${SUBPROTOCOL}`));
    const tlsSocket = req.socket as TLSSocket;
    if (!tlsSocket.authorized) {
      const why = String(tlsSocket.authorizationError ?? 'no client certificate');
      return refuse(refusal('UNAUTHENTICATED', why === 'CERT_HAS_EXPIRED' ? 'the agent certificate has expired' : `client certificate refused: ${why}`));
    }
    // Once: Node builds the whole certificate (fingerprints, key, DER) at each call.
    const peer = tlsSocket.getPeerCertificate();
    const checked = checkRegistration(req, peer);
    if (!checked.ok) return refuse(checked.refusal);
    // An agent that already holds a tunnel here, come back through a balancer:
    // not a new registration (it would replace the live tunnel).
    const held = String(req.headers[H.heldServers] ?? '').split(',').map((s) => s.trim());
    if (held.includes(this.config.serverId)) {
      this.metrics.registrations.inc({ result: 'already-held' });
      return respondRaw(socket, 409, `agent already holds a tunnel to server ${this.config.serverId}`, { [H.serverId]: this.config.serverId });
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.register(ws, checked.claim, peer));
  }

  private register(ws: WebSocket, claim: Claim, peer: PeerCertificate): void {
    const sessionId = randomBytes(6).toString('hex');
    const log = this.log.child({ cluster: claim.cluster, agentId: claim.agentId, sessionId });
    const session = new Session(new WsTransport(ws), { role: 'server', ...this.config.session });
    const tunnel: AgentTunnel = {
      cluster: claim.cluster,
      agentId: claim.agentId,
      sessionId,
      session,
      allowDest: new Set(claim.allowDest),
      l7: claim.l7,
      connectedAt: new Date(),
      log,
      ...(claim.apiserverCA ? { apiserverCA: claim.apiserverCA } : {}),
    };
    this.certs?.attach(tunnel, session, peer);
    registerTunnel(this.registry, this.metrics, this.config.gracePeriodMs, tunnel, { allowDest: claim.allowDest, l7: claim.l7 });
  }

  /** No new agents; GOAWAY to every agent; each tunnel closes once its streams end (or the grace period passes). */
  async drain(graceMs: number): Promise<void> {
    this.server.close();
    const sessions = this.registry.entries().flatMap((c) => [...c.agents.values()].map((t) => t.session));
    await Promise.all(sessions.map((s) => s.drain(graceMs)));
  }

  close(): void {
    for (const c of this.registry.entries()) for (const t of c.agents.values()) t.session.close();
    this.wss.close();
    this.server.close();
    this.sockets.destroyAll();
  }
}
