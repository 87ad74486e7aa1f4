import os from 'node:os';
import { Defaults, createLogger, defaultLimits } from '@kubetunnel/shared';
import { parsePolicy, parseTokenFile, startServer, type ServerConfig, type KubetunnelServer } from '@kubetunnel/server';
import { SettingError, type Settings } from '../options.js';
import { watchTlsFiles } from '../reload.js';

/** The connection limits of the four listeners, from the limit flags. */
export function serverLimits(s: Settings): NonNullable<ServerConfig['limits']> {
  const maxConnections = s.int('max-connections', 1, 10_000_000);
  // Pending connections are connections too: a lower --max-connections bounds them as well.
  const maxPending = Math.min(s.int('max-pending-connections', 1, 10_000_000), maxConnections);
  const maxPendingPerSource = s.int('max-pending-per-source', 0, 10_000_000);
  const maxAgentConnections = s.int('max-agent-connections', 1, 10_000_000);
  const timeouts = {
    // Node itself ends a TLS handshake after 2 minutes.
    handshakeTimeoutMs: s.timeout('handshake-timeout', 120_000),
    headerTimeoutMs: s.timeout('header-timeout'),
    idleTimeoutMs: s.timeout('idle-timeout'),
  };
  const frontend = defaultLimits('frontend');
  const gateway = defaultLimits('agent-gateway');
  const plain = { ...defaultLimits('plain'), ...timeouts, requestTimeoutMs: timeouts.headerTimeoutMs };
  return {
    proxy: { ...frontend, ...timeouts, maxConnections, maxPending, maxPendingPerSource },
    agent: {
      ...gateway,
      ...timeouts,
      maxConnections: maxAgentConnections,
      maxPending: Math.min(gateway.maxPending, maxAgentConnections),
      maxPendingPerSource,
    },
    health: plain,
    admin: plain,
  };
}

/** Builds and checks the server's config; errors name the flag. */
export function serverConfig(s: Settings): ServerConfig {
  const tokenText = s.file('token-file');
  let tokens: ServerConfig['tokens'] = new Map();
  if (tokenText !== undefined) {
    try {
      tokens = parseTokenFile(tokenText);
    } catch (err) {
      throw new SettingError('token-file', (err as Error).message);
    }
  }
  const serverCount = s.int('server-count', 1, 1000);
  const config: ServerConfig = {
    cert: s.requireFile('cert'),
    key: s.requireFile('key'),
    ca: s.requireFile('ca'),
    bindAddress: s.require('bind-address'),
    proxyPort: s.port('proxy-port'),
    agentPort: s.port('agent-port'),
    healthPort: s.port('health-port'),
    adminPort: s.port('admin-port'),
    adminBindAddress: s.require('admin-bind-address'),
    tokens,
    serverId: s.string('server-id') || os.hostname(),
    serverCount,
    gracePeriodMs: s.duration('grace-period'),
    dialTimeoutMs: s.duration('dial-timeout'),
    maxHeaderSize: Defaults.maxHeaderSize,
    maxStreamsPerClient: s.int('max-streams-per-client', 1, 1_000_000),
    limits: serverLimits(s),
  };
  const policyText = s.file('policy');
  if (policyText !== undefined) {
    try {
      config.policy = parsePolicy(policyText);
    } catch (err) {
      throw new SettingError('policy', (err as Error).message);
    }
  }
  const domain = s.string('cluster-domain');
  if (domain) config.clusterDomain = domain;
  return config;
}

/** The effective config for the start-up log: no key material, no tokens. */
export function printable(config: ServerConfig): Record<string, unknown> {
  const { cert: _c, key: _k, ca: _ca, tokens, policy, ...rest } = config;
  return { ...rest, tokens: `${tokens.size} static tokens`, policy: policy ? `${policy.length} rules` : 'none' };
}

export async function runServer(s: Settings): Promise<KubetunnelServer> {
  const log = createLogger((s.string('log-level') ?? 'info') as 'info');
  const config = serverConfig(s);
  log.info({ config: printable(config) }, 'starting kubetunnel server');
  const server = await startServer(config, log);
  watchTlsFiles({ cert: s.require('cert'), key: s.require('key'), ca: s.require('ca') }, (pem) => server.updateTls(pem), log);
  return server;
}
