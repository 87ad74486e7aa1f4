/** Configurations for tests that run a server and agents in this process. */
import { once } from 'node:events';
import { expect } from 'vitest';
import { startAgent, type Agent, type AgentConfig } from '@kubetunnel/agent';
import type { KubetunnelServer, ServerConfig } from '@kubetunnel/server';
import { Defaults, silentLogger, type Pem } from '@kubetunnel/shared';

/** A server on loopback, every port picked by the system. */
export function testServerConfig(ca: Pem, serverPem: Pem, tokens: ServerConfig['tokens']): ServerConfig {
  return {
    cert: serverPem.cert,
    key: serverPem.key,
    ca: ca.cert,
    bindAddress: '127.0.0.1',
    proxyPort: 0,
    agentPort: 0,
    healthPort: 0,
    adminPort: 0,
    adminBindAddress: '127.0.0.1',
    tokens,
    serverId: 'test-server',
    serverCount: 1,
    gracePeriodMs: 2000,
    dialTimeoutMs: 2000,
    maxHeaderSize: Defaults.maxHeaderSize,
    maxStreamsPerClient: 100,
  };
}

/** An agent of `cluster` dialing `server`, with short backoff. */
export function testAgentConfig(
  server: KubetunnelServer,
  ca: Pem,
  agentPem: Pem,
  cluster: string,
  apiserver: string,
  extra: Partial<AgentConfig> = {},
): AgentConfig {
  return {
    servers: [`wss://localhost:${server.addresses.agent.port}`],
    cluster,
    agentId: 'a1',
    cert: agentPem.cert,
    key: agentPem.key,
    ca: ca.cert,
    apiserver: new URL(apiserver),
    allowDest: [],
    healthPort: 0,
    healthHost: '127.0.0.1',
    gracePeriodMs: 2000,
    backoff: { initialMs: 20, maxMs: 200 },
    dialTimeoutMs: 2000,
    ...extra,
  };
}

/** Starts an agent and resolves once `server` has registered it. */
export async function startRegisteredAgent(server: KubetunnelServer, config: AgentConfig): Promise<Agent> {
  const agent = await startAgent(config, silentLogger());
  while (!server.registry.get(config.cluster)?.agents.has(config.agentId)) await once(server.registry, 'change');
  return agent;
}

/**
 * Asserts that the server (and `agent`, if given) holds no open stream and no
 * pending dial. Streams end asynchronously on both sides once the last bytes
 * are read, so it waits up to `withinMs` for them first.
 */
export async function expectIdle(server: KubetunnelServer, agent?: Agent, withinMs = 3000): Promise<void> {
  const deadline = Date.now() + withinMs;
  while ((server.registry.totals().openStreams > 0 || (agent?.openStreams() ?? 0) > 0) && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 5));
  expect(server.registry.totals()).toMatchObject({ openStreams: 0, pendingDials: 0 });
  if (agent) expect(agent.openStreams()).toBe(0);
}
