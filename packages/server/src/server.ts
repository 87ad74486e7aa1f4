import { once } from 'node:events';
import type http from 'node:http';
import type http2 from 'node:http2';
import type https from 'node:https';
import type { Server } from 'node:net';
import type { AddressInfo } from 'node:net';
import { Defaults, SERVER_TLS_POLICY, createHealthServer, defaultLimits, guardListener, type ListenerGuard, type Logger } from '@kubetunnel/shared';
import { createAdminServer } from './admin.js';
import { AgentGateway, GATEWAY_TLS_POLICY } from './agent-gateway.js';
import { indexTokens } from './auth.js';
import type { ListenerName, ServerConfig } from './config.js';
import type { FrontendDeps } from './deps.js';
import { Frontend } from './frontend.js';
import { AnpAgentService } from './grpc/agent-service.js';
import { GrpcFrontend } from './grpc/frontend.js';
import { TlsMaterial, type GrpcServerOptions } from './grpc/listeners.js';
import { AgentCertificates } from './join.js';
import { l7Handlers } from './l7.js';
import { allowAll, policyAuthorizer } from './policy.js';
import { ServerMetrics } from './metrics.js';
import { ClusterRegistry } from './registry.js';
import { UserStreamLimit } from './stream-limit.js';

export interface ServerAddresses {
  proxy: AddressInfo;
  agent: AddressInfo;
  /** Port 0 when not bound (`controlPorts: false`). */
  health: AddressInfo;
  /** Port 0 when not bound (`controlPorts: false`). */
  admin: AddressInfo;
  /** The Konnectivity ProxyService TLS listener, when on. */
  grpc?: AddressInfo;
  /** The Konnectivity ProxyService Unix socket, when on. */
  grpcUds?: string;
  /** The Konnectivity AgentService listener (ANP proxy-agents), when on. */
  anpAgent?: AddressInfo;
}

export interface KubetunnelServer {
  registry: ClusterRegistry;
  metrics: ServerMetrics;
  addresses: ServerAddresses;
  /** Open client sockets on the frontend (tests assert it returns to 0). */
  frontendSockets(): number;
  /** New certificate, key and CA for the listeners (new connections use them). */
  updateTls(tls: { cert: string; key: string; ca: string }): void;
  /** SIGTERM: not ready; after the shutdown delay no new connections, GOAWAY to agents, streams finish within the grace period; then close. */
  drain(graceMs?: number): Promise<void>;
  close(): Promise<void>;
}

async function listen(server: Server, port: number, host: string): Promise<AddressInfo> {
  server.listen(port, host);
  await Promise.race([
    once(server, 'listening'),
    once(server, 'error').then(([err]) => {
      throw err;
    }),
  ]);
  return server.address() as AddressInfo;
}

/** The composition root of the server: builds every part from a validated config, binds the listeners, hands back the running server. */
export async function startServer(config: ServerConfig, log: Logger): Promise<KubetunnelServer> {
  const registry = new ClusterRegistry(config.registrationGraceMs ?? 0);
  const metrics = new ServerMetrics(registry);
  const parts = buildParts(config, registry, metrics, log);
  const addresses = await listenAll(config, parts, log);
  return running(config, parts, addresses, log);
}

/** Everything a server runs, built and not yet listening. */
interface Parts {
  registry: ClusterRegistry;
  metrics: ServerMetrics;
  frontend: Frontend;
  gateway: AgentGateway;
  health: http.Server;
  admin: http.Server;
  grpcTls: TlsMaterial;
  grpcFrontend: GrpcFrontend | undefined;
  anpAgents: AnpAgentService | undefined;
  /** Agent certificates: joins, renewals, and the expiry of every agent tunnel. */
  certs: AgentCertificates;
  guards: ListenerGuard[];
  /** Draining: /readyz says so. */
  readiness: { draining: boolean };
}

/** What every client frontend dials and authenticates with. */
function frontendDeps(config: ServerConfig, registry: ClusterRegistry, metrics: ServerMetrics, log: Logger): FrontendDeps {
  if (!config.policy) log.warn('no policy: every authenticated identity may reach every cluster');
  return {
    registry,
    metrics,
    tokens: indexTokens(config.tokens),
    dialTimeoutMs: config.dialTimeoutMs,
    dialAttempts: Defaults.dialAttempts,
    clientStreams: new UserStreamLimit(config.maxStreamsPerClient),
    authorize: config.policy ? policyAuthorizer(config.policy) : allowAll,
    log,
    ...(config.clusterDomain ? { clusterDomain: config.clusterDomain } : {}),
  };
}

function buildParts(config: ServerConfig, registry: ClusterRegistry, metrics: ServerMetrics, log: Logger): Parts {
  const deps = frontendDeps(config, registry, metrics, log);
  const certs = new AgentCertificates(
    {
      clientCA: config.ca,
      ...(config.clientCaKey ? { clientCaKey: config.clientCaKey } : {}),
      ...(config.joinRevocationsFile ? { revocationsFile: config.joinRevocationsFile } : {}),
      ...(config.agentCertTtlMs ? { agentCertTtlMs: config.agentCertTtlMs } : {}),
    },
    metrics,
    log.child({ component: 'join' }),
  );
  const gateway = new AgentGateway(config, registry, metrics, log.child({ component: 'agent-gateway' }), certs);
  const l7 = l7Handlers({
    ...deps,
    log: log.child({ frontend: 'l7' }),
    // An audit line's fields are the fixed ones of L7Frontend.audit, none a
    // credential: not searched for the paths to redact, a cost on every request.
    audit: log.child({ component: 'audit' }, { redact: [] }),
    serverNameSuffix: config.clusterDomain ?? Defaults.l7ServerNameSuffix,
  });
  const frontend = new Frontend(config, deps, l7, log.child({ component: 'frontend' }));
  const readiness = { draining: false };
  // Not ready for clients while agents may still be coming back (the
  // registration grace); agents reach a replica that is not ready yet through
  // their own balancer or Service (deploy/server.yaml).
  const health = createHealthServer(() => (readiness.draining ? 'draining' : registry.young ? 'starting: agents are registering' : true));
  const admin = createAdminServer(config.serverId, registry, metrics);
  const grpcTls = new TlsMaterial({ cert: config.cert, key: config.key, ca: config.ca });
  const guards = listenerGuards(config, metrics, log);
  guards.guard('proxy', frontend.server, 'frontend');
  guards.guard('agent', gateway.server, 'agent-gateway');
  guards.guard('health', health, 'plain');
  guards.guard('admin', admin, 'plain');
  return {
    registry,
    metrics,
    frontend,
    gateway,
    health,
    admin,
    grpcTls,
    certs,
    grpcFrontend: grpcFrontendOf(config, deps, grpcTls, guards.grpcHardening('grpc', 'frontend'), log),
    anpAgents: anpAgentsOf(config, registry, metrics, grpcTls, guards.grpcHardening('anp-agent', 'agent-gateway'), log),
    guards: guards.all,
    readiness,
  };
}

/** The Konnectivity ProxyService frontend, when a gRPC port or socket is configured. */
function grpcFrontendOf(config: ServerConfig, deps: FrontendDeps, tls: TlsMaterial, hardening: GrpcServerOptions, log: Logger): GrpcFrontend | undefined {
  if (config.grpcPort === undefined && config.grpcUds === undefined) return undefined;
  return new GrpcFrontend(
    {
      bindAddress: config.bindAddress,
      udsIdentity: config.grpcUdsIdentity ?? { user: 'kube-apiserver', groups: [] },
      ...(config.grpcPort !== undefined ? { port: config.grpcPort } : {}),
      ...(config.grpcUds !== undefined ? { uds: config.grpcUds } : {}),
    },
    deps,
    tls,
    hardening,
    log.child({ component: 'grpc' }),
  );
}

/** The Konnectivity AgentService for ANP proxy-agents, when its port is configured. */
function anpAgentsOf(
  config: ServerConfig,
  registry: ClusterRegistry,
  metrics: ServerMetrics,
  tls: TlsMaterial,
  hardening: GrpcServerOptions,
  log: Logger,
): AnpAgentService | undefined {
  if (config.anpAgentPort === undefined) return undefined;
  return new AnpAgentService(
    {
      bindAddress: config.bindAddress,
      port: config.anpAgentPort,
      serverId: config.serverId,
      serverCount: config.serverCount,
      gracePeriodMs: config.gracePeriodMs,
      dialTimeoutMs: config.dialTimeoutMs,
      ...(config.memberKubeconfigs ? { members: config.memberKubeconfigs } : {}),
      ...(config.clusterDomain ? { clusterDomain: config.clusterDomain } : {}),
    },
    registry,
    metrics,
    tls,
    hardening,
    log.child({ component: 'anp-agent' }),
  );
}

/**
 * The connection limits of every listener, reported in the metrics. The gRPC
 * listeners are guarded as the others are, and have gRPC's own bounds too
 * (grpc/listeners.ts); their HTTP/2 servers exist only once they listen, so
 * `all` grows then.
 */
function listenerGuards(config: ServerConfig, metrics: ServerMetrics, log: Logger) {
  const limitsLog = log.child({ component: 'limits' });
  const all: ListenerGuard[] = [];
  type Kind = Parameters<typeof defaultLimits>[0];
  const limitsOf = (name: ListenerName, kind: Kind) => config.limits?.[name] ?? defaultLimits(kind);
  const guard = (name: ListenerName, server: http.Server | https.Server | http2.Http2SecureServer, kind: Kind, isHttp2 = false): ListenerGuard => {
    const g = guardListener(server, {
      name,
      limits: limitsOf(name, kind),
      log: limitsLog,
      onRefused: (reason) => metrics.connectionsRefused.inc({ listener: name, reason }),
      http2: isHttp2,
    });
    metrics.listeners.set(name, g);
    all.push(g);
    return g;
  };
  const grpcHardening = (name: 'grpc' | 'anp-agent', kind: 'frontend' | 'agent-gateway'): GrpcServerOptions => ({
    name,
    idleTimeoutMs: limitsOf(name, kind).idleTimeoutMs,
    guard: (h2) => guard(name, h2, kind, true),
    onPingFlood: () => metrics.connectionsRefused.inc({ listener: name, reason: 'too-many-pings' }),
    log: limitsLog,
  });
  return { all, guard, grpcHardening };
}

/** Binds every listener; on a failure, closes those already bound and throws. */
async function listenAll(config: ServerConfig, parts: Parts, log: Logger): Promise<ServerAddresses> {
  const { frontend, gateway, health, admin, grpcFrontend, anpAgents } = parts;
  const bound: Server[] = [];
  const bind = async (name: string, server: Server, port: number, host: string) => {
    const addr = await listen(server, port, host);
    bound.push(server);
    log.info({ listener: name, address: `${addr.address}:${addr.port}` }, `${name} listening`);
    return addr;
  };
  /** The address of a gRPC listener on the bind address (grpc-js reports only the port). */
  const boundTo = (port: number): AddressInfo => ({ address: config.bindAddress, family: config.bindAddress.includes(':') ? 'IPv6' : 'IPv4', port });
  const control = config.controlPorts !== false;
  try {
    const addresses: ServerAddresses = {
      proxy: await bind('proxy', frontend.server, config.proxyPort, config.bindAddress),
      agent: await bind('agent', gateway.server, config.agentPort, config.bindAddress),
      health: control ? await bind('health', health, config.healthPort, config.bindAddress) : boundTo(0),
      admin: control ? await bind('admin', admin, config.adminPort, config.adminBindAddress) : boundTo(0),
    };
    if (grpcFrontend) {
      const g = await grpcFrontend.listen();
      if (g.port !== undefined) addresses.grpc = boundTo(g.port);
      if (g.uds !== undefined) addresses.grpcUds = g.uds;
    }
    if (anpAgents) addresses.anpAgent = boundTo(await anpAgents.listen());
    return addresses;
  } catch (err) {
    for (const s of bound) s.close();
    grpcFrontend?.close();
    anpAgents?.close();
    parts.certs.close();
    throw err;
  }
}

/** The running server: its state for tests and the admin, TLS reload, drain and close. */
function running(config: ServerConfig, parts: Parts, addresses: ServerAddresses, log: Logger): KubetunnelServer {
  const { registry, metrics, frontend, gateway, grpcTls, grpcFrontend } = parts;
  const close = closer(parts, log);
  return {
    registry,
    metrics,
    addresses,
    frontendSockets: () => frontend.openSockets,
    updateTls(tls) {
      // A new secure context starts from Node's defaults: the TLS policy goes with it.
      frontend.server.setSecureContext({ ...SERVER_TLS_POLICY, ...tls });
      gateway.server.setSecureContext({ ...GATEWAY_TLS_POLICY, ...tls });
      grpcTls.set(tls);
      log.info('TLS certificate, key and CA reloaded');
    },
    async drain(graceMs = config.gracePeriodMs) {
      // Not ready at once, but still serving for the shutdown delay: a load
      // balancer takes a while to notice, and sends new clients meanwhile.
      parts.readiness.draining = true;
      const delayMs = config.shutdownDelayMs ?? 0;
      if (delayMs > 0) {
        log.info({ delayMs }, 'shutting down: not ready; serving on for the shutdown delay');
        await new Promise((resolve) => setTimeout(resolve, delayMs));
      }
      frontend.stopAccepting();
      log.info({ graceMs }, 'draining: GOAWAY to agents, no new connections');
      await Promise.all([gateway.drain(graceMs), grpcFrontend?.drain(graceMs)]);
      await close();
    },
    close,
  };
}

/** Closes every part once (later calls get the same promise); resolves when every listener has closed. */
function closer(parts: Parts, log: Logger): () => Promise<void> {
  const { frontend, gateway, certs, health, admin, grpcFrontend, anpAgents, guards } = parts;
  const listeners: Server[] = [frontend.server, gateway.server, health, admin];
  let closed: Promise<void> | undefined;
  return () => {
    closed ??= (async () => {
      frontend.close();
      grpcFrontend?.close();
      gateway.close();
      certs.close();
      anpAgents?.close();
      for (const g of guards) g.destroyPending();
      for (const s of [health, admin]) {
        s.close();
        s.closeAllConnections();
      }
      await Promise.all(listeners.map((s) => (s.listening ? once(s, 'close') : undefined)));
      log.info('server stopped');
    })();
    return closed;
  };
}
