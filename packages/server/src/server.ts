import { once } from 'node:events';
import type http from 'node:http';
import type https from 'node:https';
import type { Server } from 'node:net';
import type { AddressInfo } from 'node:net';
import { Defaults, SERVER_TLS_POLICY, createHealthServer, defaultLimits, guardListener, type ListenerGuard, type Logger } from '@kubetunnel/shared';
import { createAdminServer } from './admin.js';
import { AgentGateway } from './agent-gateway.js';
import { indexTokens } from './auth.js';
import type { ListenerName, ServerConfig } from './config.js';
import type { ConnectDeps } from './connect.js';
import { Frontend } from './frontend.js';
import { AnpAgentService } from './grpc/agent-service.js';
import { GrpcFrontend } from './grpc/frontend.js';
import { TlsMaterial } from './grpc/listeners.js';
import { AgentCertificates } from './join.js';
import { l7Handlers } from './l7.js';
import { allowAll, policyAuthorizer } from './policy.js';
import { ServerMetrics } from './metrics.js';
import { ClusterRegistry } from './registry.js';

export interface ServerAddresses {
  proxy: AddressInfo;
  agent: AddressInfo;
  health: AddressInfo;
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

/** The composition root of the server: builds every part from a validated config. */
export async function startServer(config: ServerConfig, log: Logger): Promise<KubetunnelServer> {
  const registry = new ClusterRegistry(config.registrationGraceMs ?? 0);
  const metrics = new ServerMetrics(registry);
  const deps: ConnectDeps = {
    registry,
    metrics,
    tokens: indexTokens(config.tokens),
    dialTimeoutMs: config.dialTimeoutMs,
    dialAttempts: Defaults.dialAttempts,
    maxStreamsPerClient: config.maxStreamsPerClient,
    clientStreams: new Map(),
    authorize: config.policy ? policyAuthorizer(config.policy) : allowAll,
    log,
    ...(config.clusterDomain ? { clusterDomain: config.clusterDomain } : {}),
  };
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
  if (!config.policy) log.warn('no policy: every authenticated identity may reach every cluster');
  const l7 = l7Handlers({
    ...deps,
    log: log.child({ frontend: 'l7' }),
    audit: log.child({ component: 'audit' }),
    serverNameSuffix: config.clusterDomain ?? Defaults.l7ServerNameSuffix,
  });
  const frontend = new Frontend(config, deps, l7, log.child({ component: 'frontend' }));
  let draining = false;
  // Not ready for clients while agents may still be coming back (the
  // registration grace); agents reach a replica that is not ready yet through
  // their own balancer or Service (deploy/server.yaml).
  const health = createHealthServer(() => (draining ? 'draining' : registry.young ? 'starting: agents are registering' : true));
  const admin = createAdminServer(config.serverId, registry, metrics);
  const grpcTls = new TlsMaterial({ cert: config.cert, key: config.key, ca: config.ca });
  const grpcFrontend =
    config.grpcPort !== undefined || config.grpcUds !== undefined
      ? new GrpcFrontend(
          {
            bindAddress: config.bindAddress,
            udsIdentity: config.grpcUdsIdentity ?? { user: 'kube-apiserver', groups: [] },
            ...(config.grpcPort !== undefined ? { port: config.grpcPort } : {}),
            ...(config.grpcUds !== undefined ? { uds: config.grpcUds } : {}),
          },
          deps,
          grpcTls,
          log.child({ component: 'grpc' }),
        )
      : undefined;
  const anpAgents =
    config.anpAgentPort !== undefined
      ? new AnpAgentService(
          {
            bindAddress: config.bindAddress,
            port: config.anpAgentPort,
            serverId: config.serverId,
            serverCount: config.serverCount,
            gracePeriodMs: config.gracePeriodMs,
            ...(config.clusterDomain ? { clusterDomain: config.clusterDomain } : {}),
          },
          registry,
          metrics,
          grpcTls,
          log.child({ component: 'anp-agent' }),
        )
      : undefined;
  const limitsLog = log.child({ component: 'limits' });
  const guard = (name: ListenerName, server: http.Server | https.Server, kind: Parameters<typeof defaultLimits>[0]): ListenerGuard => {
    const g = guardListener(server, {
      name,
      limits: config.limits?.[name] ?? defaultLimits(kind),
      log: limitsLog,
      onRefused: (reason) => metrics.connectionsRefused.inc({ listener: name, reason }),
    });
    metrics.listeners.set(name, g);
    return g;
  };
  const guards = [
    guard('proxy', frontend.server, 'frontend'),
    guard('agent', gateway.server, 'agent-gateway'),
    guard('health', health, 'plain'),
    guard('admin', admin, 'plain'),
  ];

  const servers: Server[] = [];
  const bind = async (name: string, server: Server, port: number, host: string) => {
    const addr = await listen(server, port, host);
    servers.push(server);
    log.info({ listener: name, address: `${addr.address}:${addr.port}` }, `${name} listening`);
    return addr;
  };
  /** The address of a gRPC listener on the bind address (grpc-js reports only the port). */
  const boundTo = (port: number): AddressInfo => ({ address: config.bindAddress, family: config.bindAddress.includes(':') ? 'IPv6' : 'IPv4', port });
  let addresses: ServerAddresses;
  try {
    addresses = {
      proxy: await bind('proxy', frontend.server, config.proxyPort, config.bindAddress),
      agent: await bind('agent', gateway.server, config.agentPort, config.bindAddress),
      health: await bind('health', health, config.healthPort, config.bindAddress),
      admin: await bind('admin', admin, config.adminPort, config.adminBindAddress),
    };
    if (grpcFrontend) {
      const g = await grpcFrontend.listen();
      if (g.port !== undefined) addresses.grpc = boundTo(g.port);
      if (g.uds !== undefined) addresses.grpcUds = g.uds;
    }
    if (anpAgents) {
      addresses.anpAgent = boundTo(await anpAgents.listen());
    }
  } catch (err) {
    for (const s of servers) s.close();
    grpcFrontend?.close();
    anpAgents?.close();
    throw err;
  }

  let closed: Promise<void> | undefined;
  const close = () => {
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
      await Promise.all(servers.map((s) => (s.listening ? once(s, 'close') : undefined)));
      log.info('server stopped');
    })();
    return closed;
  };

  return {
    registry,
    metrics,
    addresses,
    frontendSockets: () => frontend.openSockets,
    updateTls(tls) {
      // A new secure context starts from Node's defaults: the TLS policy goes with it.
      for (const s of [frontend.server, gateway.server]) s.setSecureContext({ ...SERVER_TLS_POLICY, ...tls });
      grpcTls.set(tls);
      log.info('TLS certificate, key and CA reloaded');
    },
    async drain(graceMs = config.gracePeriodMs) {
      // Not ready at once, but still serving for the shutdown delay: a load
      // balancer takes a while to notice, and sends new clients meanwhile.
      draining = true;
      const delayMs = config.shutdownDelayMs ?? 0;
      if (delayMs > 0) {
        log.info({ delayMs }, 'shutting down: not ready; serving on for the shutdown delay');
        await new Promise((resolve) => setTimeout(resolve, delayMs));
      }
      frontend.server.close();
      log.info({ graceMs }, 'draining: GOAWAY to agents, no new connections');
      await Promise.all([gateway.drain(graceMs), grpcFrontend?.drain(graceMs)]);
      await close();
    },
    close,
  };
}
