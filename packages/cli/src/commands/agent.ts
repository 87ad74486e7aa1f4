import { Resolver } from 'node:dns/promises';
import fs from 'node:fs';
import os from 'node:os';
import { LOG_LEVELS, createLogger, defaultLimits, isValidClusterName, isValidHostPort, parseCaCertHash } from '@kubetunnel/shared';
import { CertRenewer, obtainCredentials, parseServerSource, startAgent, type Agent, type AgentConfig, type Credentials, type JoinSettings } from '@kubetunnel/agent';
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

/**
 * The join settings, when the agent joins with a token (--join-token,
 * --ca-cert-hash, --state-dir) rather than using --cert/--key/--ca files;
 * undefined in file mode.
 */
export function joinSettings(s: Settings): JoinSettings | undefined {
  const files = ['cert', 'key', 'ca'].filter((f) => s.string(f));
  const token = s.string('join-token');
  const hash = s.string('ca-cert-hash');
  if (files.length > 0) {
    if (token || hash) throw new SettingError(token ? 'join-token' : 'ca-cert-hash', 'give --cert/--key/--ca or --join-token/--ca-cert-hash, not both');
    return undefined;
  }
  if (!token && !hash) return undefined;
  if (!hash) throw new SettingError('ca-cert-hash', 'is required with --join-token (kubetunnel token create prints it)');
  const parsed = parseCaCertHash(hash);
  if (!parsed) throw new SettingError('ca-cert-hash', `want sha256: and 64 hex digits, got ${JSON.stringify(hash)}`);
  return { ...(token ? { token } : {}), caCertHash: parsed, stateDir: s.require('state-dir') };
}

/** Builds and checks the agent's config; in-cluster defaults come from the pod's environment. `tls`: credentials from a join. */
export function agentConfig(s: Settings, env: NodeJS.ProcessEnv, tls?: Credentials): AgentConfig {
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
    cert: tls?.cert ?? s.requireFile('cert'),
    key: tls?.key ?? s.requireFile('key'),
    ca: tls?.ca ?? s.requireFile('ca'),
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
  const join = joinSettings(s);
  if (!join) {
    const config = agentConfig(s, env);
    logStart(log, config, 'certificate files');
    const agent = await startAgent(config, log);
    watchTlsFiles({ cert: s.require('cert'), key: s.require('key'), ca: s.require('ca') }, (pem) => agent.updateTls(pem), log);
    return agent;
  }
  // Check every other setting before joining (the join may wait for the server).
  const placeholder = { cert: '', key: '', ca: '' };
  const draft = agentConfig(s, env, placeholder);
  const target = { servers: draft.servers, dnsServers: draft.dnsServers ?? [], cluster: draft.cluster, agentId: draft.agentId };
  const joinLog = log.child({ component: 'join', cluster: draft.cluster, agentId: draft.agentId });
  const creds = (await obtainCredentials(target, join, joinLog))!;
  const config = agentConfig(s, env, creds);
  logStart(log, config, `join (state in ${join.stateDir})`);
  const agent = await startAgent(config, log);
  const renewer = new CertRenewer(agent.connector, (c) => agent.updateTls(c), target, join, creds, joinLog);
  renewer.start();
  const drain = agent.drain.bind(agent);
  const close = agent.close.bind(agent);
  agent.drain = (graceMs) => (renewer.stop(), drain(graceMs));
  agent.close = () => (renewer.stop(), close());
  return agent;
}

function logStart(log: ReturnType<typeof createLogger>, config: AgentConfig, credentials: string): void {
  const { cert: _c, key: _k, ca: _ca, apiserverCA, ...rest } = config;
  log.info({ config: { ...rest, apiserver: config.apiserver.href, apiserverCA: apiserverCA ? 'set' : 'none', credentials } }, 'starting kubetunnel agent');
}
