import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { agentClusterOf, isValidAgentId, type Logger } from '@kubetunnel/shared';
import { registerTunnel, registrationResult } from '../agent-gateway.js';
import type { ServerMetrics } from '../metrics.js';
import { refused, type Outcome } from '../refusal.js';
import type { AgentTunnel, ClusterRegistry } from '../registry.js';
import { AnpL7, type MemberCredential } from './anp-l7.js';
import { AnpSession } from './anp-session.js';
import { grpcStatusOf } from './proxy-service.js';
import { bindTcp, createGrpcServer, shutdownNow, type GrpcServerOptions, type TlsMaterial } from './listeners.js';
import { AgentServiceDef, type Packet } from './packets.js';

export interface AnpAgentServiceOptions {
  bindAddress: string;
  port: number;
  serverId: string;
  serverCount: number;
  clusterDomain?: string;
  gracePeriodMs: number;
  /** How long a dial may take (the hub's own dials for L7, through the agent). */
  dialTimeoutMs: number;
  /** Credentials the hub holds for clusters it serves in L7 mode through ANP agents (--member-kubeconfig). */
  members?: ReadonlyMap<string, MemberCredential>;
}

type Claim = Outcome<{ cluster: string; agentId: string }>;

function single(md: grpc.Metadata, key: string): string | string[] | undefined {
  const v = md.get(key).map((x) => (Buffer.isBuffer(x) ? x.toString('utf8') : x));
  return v.length === 0 ? undefined : v.length === 1 ? v[0] : v;
}

/**
 * Checks an ANP agent's claim against its certificate: the cluster is the
 * one the certificate binds (as for kubetunnel agents); `agentID` is one
 * valid id; every `host=` in `agentIdentifiers` names that cluster (or
 * `<cluster>.<cluster-domain>`): ANP trusts the claim, we do not.
 */
export function checkAnpAgent(call: grpc.ServerDuplexStream<Packet, Packet>, clusterDomain?: string): Claim {
  const cluster = agentClusterOf(call.getAuthContext().sslPeerCertificate);
  if (!cluster) return refused('FORBIDDEN', 'not an agent certificate');
  const id = single(call.metadata, 'agentid');
  if (typeof id !== 'string' || !isValidAgentId(id))
    return refused('BAD_REQUEST', 'want exactly one valid agentID metadata value');
  const ids = single(call.metadata, 'agentidentifiers');
  if (Array.isArray(ids)) return refused('BAD_REQUEST', 'more than one agentIdentifiers metadata value');
  const own = new Set([cluster, ...(clusterDomain ? [`${cluster}.${clusterDomain.replace(/^\.+|\.+$/g, '')}`] : [])]);
  const foreign = new URLSearchParams(ids ?? '').getAll('host').find((h) => !own.has(h.toLowerCase()));
  if (foreign !== undefined)
    return refused('FORBIDDEN', `certificate is for cluster ${cluster}; agentIdentifiers claim host=${foreign}`);
  return { ok: true, cluster, agentId: id };
}

/**
 * AgentService for unmodified ANP proxy-agents: TLS with a required client
 * certificate from the CA; each agent's Connect call becomes one more tunnel
 * of its cluster, picked like any other and drained when the agent sends DRAIN.
 */
export class AnpAgentService {
  readonly server: grpc.Server;

  constructor(
    private readonly options: AnpAgentServiceOptions,
    private readonly registry: ClusterRegistry,
    private readonly metrics: ServerMetrics,
    private readonly tls: TlsMaterial,
    hardening: GrpcServerOptions,
    private readonly log: Logger,
  ) {
    this.server = createGrpcServer(hardening);
    this.server.addService(AgentServiceDef, { Connect: (call: grpc.ServerDuplexStream<Packet, Packet>) => this.connect(call) });
  }

  async listen(): Promise<number> {
    const port = await bindTcp(this.server, this.options.bindAddress, this.options.port, this.tls.credentials(true));
    this.log.info({ listener: 'anp-agent', address: `${this.options.bindAddress}:${port}` }, 'anp-agent listening');
    return port;
  }

  private connect(call: grpc.ServerDuplexStream<Packet, Packet>): void {
    const claim = checkAnpAgent(call, this.options.clusterDomain);
    if (!claim.ok) {
      const r = claim.refusal;
      this.metrics.registrations.inc({ result: registrationResult(r) });
      this.log.warn({ reason: r.reason, message: r.message, peer: call.getPeer() }, 'ANP agent refused');
      call.on('error', () => {});
      call.emit('error', { code: grpcStatusOf(r), details: r.message });
      return;
    }
    const md = new grpc.Metadata();
    md.set('serverid', this.options.serverId);
    md.set('servercount', String(this.options.serverCount));
    call.sendMetadata(md);
    const sessionId = randomBytes(6).toString('hex');
    const agentId = `anp:${claim.agentId}`;
    const log = this.log.child({ cluster: claim.cluster, agentId, sessionId });
    const session = new AnpSession(call, log);
    const member = this.options.members?.get(claim.cluster);
    if (member) session.l7 = new AnpL7(session, member, this.options.dialTimeoutMs, log.child({ l7: 'hub' }));
    const tunnel: AgentTunnel = {
      cluster: claim.cluster,
      agentId,
      sessionId,
      session,
      allowDest: new Set(),
      l7: member !== undefined,
      ...(member
        ? member.ca
          ? { apiserverCA: member.ca }
          : {}
        : { l7Refusal: `ANP agents dial TCP only; L7 through them needs the server's --member-kubeconfig ${claim.cluster}=FILE` }),
      connectedAt: new Date(),
      log,
    };
    registerTunnel(this.registry, this.metrics, this.options.gracePeriodMs, tunnel, { peer: call.getPeer(), protocol: 'konnectivity' });
  }

  close(): void {
    shutdownNow(this.server);
  }
}
