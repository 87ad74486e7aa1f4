import { Resolver } from 'node:dns/promises';
import fs from 'node:fs';
import os from 'node:os';
import { LOG_LEVELS, createLogger, defaultLimits, isValidClusterName, isValidHostPort } from '@kubetunnel/shared';
import { parseServerSource, startAgent, type Agent, type AgentConfig } from '@kubetunnel/agent';
import { SettingError, type Settings } from '../options.js';
import { watchTlsFiles } from '../reload.js';

const SA_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

function readIfExists(path: string): string | undefined {
  try {
    return fs.readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** Resolvers for dns:/// servers: IP addresses, each with an optional port. */
function dnsServers(s: Settings): string[] {
  const list = s.list('dns-server');
  try {
    new Resolver().setServers(list);
  } catch {
    throw new SettingError('dns-server', `want IP or IP:PORT entries, got ${JSON.stringify(list)}`);
  }
  return list;
}

/** Builds and checks the agent's config; in-cluster defaults come from the pod's environment. */
export function agentConfig(s: Settings, env: NodeJS.ProcessEnv): AgentConfig {
  const servers = s.list('server');
  if (servers.length === 0) throw new SettingError('server', 'is required (wss://HOST:8091 or dns:///NAME:8091)');
  for (const u of servers) {
    const source = parseServerSource(u);
    if (typeof source === 'string') throw new SettingError('server', source);
  }
  const cluster = s.require('cluster');
  if (!isValidClusterName(cluster)) throw new SettingError('cluster', 'want a DNS label: a-z, 0-9 and -, at most 63 characters');
  let apiserverText = s.string('apiserver');
  if (!apiserverText) {
    const host = env.KUBERNETES_SERVICE_HOST;
    const port = env.KUBERNETES_SERVICE_PORT ?? '443';
    if (!host) throw new SettingError('apiserver', 'is required outside a cluster (no KUBERNETES_SERVICE_HOST)');
    apiserverText = `https://${host.includes(':') ? `[${host}]` : host}:${port}`;
  }
  let apiserver: URL;
  try {
    apiserver = new URL(apiserverText);
  } catch {
    throw new SettingError('apiserver', `not a URL: ${JSON.stringify(apiserverText)}`);
  }
  if (apiserver.protocol !== 'https:') throw new SettingError('apiserver', 'want an https:// URL');
  const allowDest = s.list('allow-dest');
  for (const d of allowDest) if (!isValidHostPort(d)) throw new SettingError('allow-dest', `want HOST:PORT, got ${JSON.stringify(d)}`);
  const apiserverCA = s.file('apiserver-ca') ?? readIfExists(`${SA_DIR}/ca.crt`);
  const tokenFile = s.string('apiserver-token-file') || (fs.existsSync(`${SA_DIR}/token`) ? `${SA_DIR}/token` : undefined);
  const config: AgentConfig = {
    servers,
    cluster,
    agentId: s.string('agent-id') || os.hostname(),
    cert: s.requireFile('cert'),
    key: s.requireFile('key'),
    ca: s.requireFile('ca'),
    apiserver,
    allowDest,
    healthPort: s.port('health-port'),
    healthHost: s.require('health-bind-address'),
    gracePeriodMs: s.duration('grace-period'),
    backoff: { initialMs: 500, maxMs: 30_000 },
    dnsServers: dnsServers(s),
    dnsRefreshMs: s.duration('dns-refresh'),
    dialTimeoutMs: s.duration('dial-timeout'),
  };
  const headerTimeoutMs = s.timeout('header-timeout');
  config.healthLimits = { ...defaultLimits('plain'), headerTimeoutMs, requestTimeoutMs: headerTimeoutMs };
  if (apiserverCA) config.apiserverCA = apiserverCA;
  if (tokenFile) config.apiserverTokenFile = tokenFile;
  return config;
}

export async function runAgent(s: Settings, env: NodeJS.ProcessEnv): Promise<Agent> {
  const log = createLogger(s.choice('log-level', LOG_LEVELS));
  const config = agentConfig(s, env);
  const { cert: _c, key: _k, ca: _ca, apiserverCA, ...rest } = config;
  log.info({ config: { ...rest, apiserver: config.apiserver.href, apiserverCA: apiserverCA ? 'set' : 'none' } }, 'starting kubetunnel agent');
  const agent = await startAgent(config, log);
  watchTlsFiles({ cert: s.require('cert'), key: s.require('key'), ca: s.require('ca') }, (pem) => agent.updateTls(pem), log);
  return agent;
}
