/** Configurations for tests that run a server and agents in this process. */
import { once } from 'node:events';
import fs from 'node:fs';
import type { Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'vitest';
import { startAgent, type Agent, type AgentConfig } from '@kubetunnel/agent';
import { startServer, type KubetunnelServer, type ServerConfig } from '@kubetunnel/server';
import { Defaults, createCA, issueAgentCert, issueServerCert, silentLogger, type Pem } from '@kubetunnel/shared';
import { startStandinApiserver, type StandinApiserver } from '@kubetunnel/standin-apiserver';

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

/** The service account an L7 agent runs as in its member cluster; the stand-in lets it impersonate. */
export const L7_AGENT_USER = 'system:serviceaccount:kubetunnel:agent';

export interface L7Member {
  hubCA: Pem;
  server: KubetunnelServer;
  agent: Agent;
  /** The stand-in member apiserver of cluster member-1. */
  api: StandinApiserver;
  close(): Promise<void>;
}

/**
 * A server with the hub tokens `tokens`, and cluster member-1: a stand-in
 * apiserver on its own CA that lets L7_AGENT_USER (token `agent-token`)
 * impersonate, and a registered agent reading that token from a file.
 * `memberTokens` are further tokens the stand-in accepts; `serverConfig`
 * overrides fields of the server's test configuration.
 */
export async function startL7Member(
  tokens: ServerConfig['tokens'],
  memberTokens: Record<string, { user: string; groups: string[] }> = {},
  serverConfig: Partial<ServerConfig> = {},
): Promise<L7Member> {
  const hubCA = createCA();
  const memberCA = createCA();
  const memberCert = issueServerCert(memberCA, { sans: ['127.0.0.1'] });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'l7member-'));
  fs.writeFileSync(path.join(dir, 'token'), 'agent-token\n');
  const api = await startStandinApiserver({
    cluster: 'member-1',
    cert: memberCert.cert,
    key: memberCert.key,
    tokens: { 'agent-token': { user: L7_AGENT_USER, groups: [] }, ...memberTokens },
    impersonators: [L7_AGENT_USER],
  });
  const server = await startServer(
    { ...testServerConfig(hubCA, issueServerCert(hubCA, { sans: ['localhost', '127.0.0.1'] }), tokens), ...serverConfig },
    silentLogger(),
  );
  const agent = await startRegisteredAgent(
    server,
    testAgentConfig(server, hubCA, issueAgentCert(hubCA, { cluster: 'member-1' }), 'member-1', api.url, {
      apiserverCA: memberCA.cert,
      apiserverTokenFile: path.join(dir, 'token'),
    }),
  );
  return {
    hubCA,
    server,
    agent,
    api,
    async close() {
      await agent.close();
      await server.close();
      await api.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Whether Node has turned Nagle's algorithm off on `socket` (its kSetNoDelay field). */
export function noDelayOf(socket: Socket): unknown {
  const field = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'kSetNoDelay');
  if (field === undefined) throw new Error('this Node keeps no kSetNoDelay field on its sockets');
  return (socket as unknown as Record<symbol, unknown>)[field];
}
