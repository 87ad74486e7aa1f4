import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { createHealthServer, defaultLimits, guardListener, type Logger } from '@kubetunnel/shared';
import type { AgentConfig } from './config.js';
import { Connector, type TunnelTls } from './connector.js';
import { handleOpen } from './handlers.js';
import { ImpersonatingProxy } from './http-handler.js';

export interface Agent {
  connector: Connector;
  healthAddress: AddressInfo;
  /** New certificate, key and CA for the next tunnels dialed. */
  updateTls(tls: TunnelTls): void;
  /** Streams open through this agent (tests assert it returns to 0). */
  openStreams(): number;
  /** SIGTERM: GOAWAY on every tunnel, let streams finish within the grace period, then close. */
  drain(graceMs?: number): Promise<void>;
  close(): Promise<void>;
}

/** The composition root of the agent: builds every part from a validated config. */
export async function startAgent(config: AgentConfig, log: Logger): Promise<Agent> {
  const l7 = new ImpersonatingProxy({
    apiserver: config.apiserver,
    log: log.child({ component: 'l7' }),
    ...(config.apiserverCA ? { apiserverCA: config.apiserverCA } : {}),
    ...(config.apiserverTokenFile ? { tokenFile: config.apiserverTokenFile } : {}),
  });
  const counters = { open: 0 };
  const deps = { apiserver: config.apiserver, allowDest: new Set(config.allowDest), dialTimeoutMs: config.dialTimeoutMs, l7 };
  const connector = new Connector(config, (incoming, slog) => handleOpen({ ...deps, log: slog }, incoming, counters), log.child({ cluster: config.cluster, agentId: config.agentId }));
  const health = createHealthServer(() => (connector.ready ? true : 'no tunnel to any server yet'));
  const guard = guardListener(health, { name: 'health', limits: config.healthLimits ?? defaultLimits('plain'), log: log.child({ component: 'limits' }) });
  health.listen(config.healthPort, config.healthHost);
  await once(health, 'listening');
  const healthAddress = health.address() as AddressInfo;
  log.info({ listener: 'health', address: `${healthAddress.address}:${healthAddress.port}` }, 'health listening');
  connector.start();

  let closed: Promise<void> | undefined;
  const close = () =>
    (closed ??= (async () => {
      connector.close();
      l7.close();
      health.close();
      health.closeAllConnections();
      guard.destroyPending();
      await once(health, 'close');
      log.info('agent stopped');
    })());
  return {
    connector,
    healthAddress,
    openStreams: () => counters.open,
    updateTls(tls) {
      connector.updateTls(tls);
      log.info('TLS certificate, key and CA reloaded; new tunnels use them');
    },
    async drain(graceMs = config.gracePeriodMs) {
      log.info({ graceMs }, 'draining: GOAWAY to servers');
      await connector.drain(graceMs);
      await close();
    },
    close,
  };
}
