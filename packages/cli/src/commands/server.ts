import { X509Certificate } from 'node:crypto';
import os from 'node:os';
import { Defaults, LOG_LEVELS, PING_INTERVAL_RANGE, createLogger, defaultLimits } from '@kubetunnel/shared';
import { parsePolicy, parseTokenFile, readMemberKubeconfigs, startServer, type ServerConfig, type KubetunnelServer } from '@kubetunnel/server';
import { SettingError, type Settings } from '../options.js';
import { watchTlsFiles } from '../reload.js';
import { runPrimary, runWorker, workerIndex } from '../workers.js';

/** The setting that names the client CA: --client-ca, or its older name --ca. */
export function clientCAFlag(s: Settings): 'client-ca' | 'ca' {
  const current = s.string('client-ca');
  const older = s.string('ca');
  if (current && older && current !== older) throw new SettingError('client-ca', 'give --client-ca or its older name --ca, not both');
  if (current) return 'client-ca';
  if (older) return 'ca';
  throw new SettingError('client-ca', 'is required (the CA that signs agent and client certificates)');
}

/** The certificates of a PEM bundle. */
function pemCertificates(pem: string): X509Certificate[] {
  const out: X509Certificate[] = [];
  for (const m of pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)) {
    try {
      out.push(new X509Certificate(m[0]));
    } catch {
      // not a certificate: TLS reports it when it loads the bundle
    }
  }
  return out;
}

/**
 * Why this setup reuses one CA for the hub and its clients, or undefined:
 * the client CA (which makes users and agents) also signed the server
 * certificate (which kubeconfigs and agents trust for the hub).
 */
export function oneCAWarning(config: Pick<ServerConfig, 'cert' | 'ca'>): string | undefined {
  const [leaf] = pemCertificates(config.cert);
  if (!leaf) return undefined;
  const signer = pemCertificates(config.ca).find((ca) => leaf.checkIssued(ca) && leaf.verify(ca.publicKey));
  if (!signer) return undefined;
  return (
    'the client CA also signed the server certificate: one CA for the hub and its clients. It works, but the CA that ' +
    'kubeconfigs and agents trust for the hub then also makes users and agents; `kubetunnel certs init` lays out a hub CA ' +
    'and a separate client CA (--client-ca DIR/client-ca.crt)'
  );
}

/** The connection limits of the listeners, from the limit flags. */
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
  const proxy = { ...frontend, ...timeouts, maxConnections, maxPending, maxPendingPerSource };
  const agent = {
    ...gateway,
    ...timeouts,
    maxConnections: maxAgentConnections,
    maxPending: Math.min(gateway.maxPending, maxAgentConnections),
    maxPendingPerSource,
  };
  // The Konnectivity listeners: gRPC clients as on the proxy port, ANP agents as on the agent port (each its own count).
  return { proxy, agent, health: plain, admin: plain, grpc: proxy, 'anp-agent': agent };
}

/** --ping-interval, within the range agents take from a server. */
export function pingInterval(s: Settings): number {
  const ms = s.duration('ping-interval');
  const { minMs, maxMs } = PING_INTERVAL_RANGE;
  if (ms < minMs || ms > maxMs) throw new SettingError('ping-interval', `want ${minMs / 1000}s to ${maxMs / 60_000}m, got ${JSON.stringify(s.string('ping-interval'))}`);
  return ms;
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
    ca: s.requireFile(clientCAFlag(s)),
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
    shutdownDelayMs: s.duration('shutdown-delay'),
    registrationGraceMs: s.duration('registration-grace'),
    dialTimeoutMs: s.duration('dial-timeout'),
    maxHeaderSize: Defaults.maxHeaderSize,
    maxStreamsPerClient: s.int('max-streams-per-client', 1, 1_000_000),
    limits: serverLimits(s),
    maxConcurrentHandshakes: s.int('max-concurrent-handshakes', 1, 100_000),
    session: { pingIntervalMs: pingInterval(s) },
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
  const grpcPort = s.optionalPort('grpc-port');
  if (grpcPort !== undefined) config.grpcPort = grpcPort;
  const grpcUds = s.string('grpc-uds');
  if (grpcUds) {
    if (!grpcUds.startsWith('/')) throw new SettingError('grpc-uds', `want an absolute path, got ${JSON.stringify(grpcUds)}`);
    config.grpcUds = grpcUds;
  }
  config.grpcUdsIdentity = { user: s.require('grpc-uds-user'), groups: s.list('grpc-uds-group') };
  const clientCaKey = s.file('client-ca-key');
  if (clientCaKey !== undefined) config.clientCaKey = clientCaKey;
  const revocations = s.string('join-revocations');
  if (revocations) config.joinRevocationsFile = revocations;
  const ttl = s.string('agent-cert-ttl');
  if (ttl !== undefined) {
    const ms = s.duration('agent-cert-ttl');
    if (ms < 1000) throw new SettingError('agent-cert-ttl', `want at least 1s, got ${ttl}`);
    config.agentCertTtlMs = ms;
  }
  const anpAgentPort = s.optionalPort('anp-agent-port');
  if (anpAgentPort !== undefined) config.anpAgentPort = anpAgentPort;
  const members = s.list('member-kubeconfig');
  if (members.length > 0) {
    try {
      config.memberKubeconfigs = readMemberKubeconfigs(members);
    } catch (err) {
      throw new SettingError('member-kubeconfig', (err as Error).message);
    }
  }
  return config;
}

/** The effective config for the start-up log: no key material, no tokens. */
export function printable(config: ServerConfig): Record<string, unknown> {
  const { cert: _c, key: _k, ca: _ca, clientCaKey, tokens, policy, ...rest } = config;
  return { ...rest, joins: clientCaKey ? 'on' : 'off', tokens: `${tokens.size} static tokens`, policy: policy ? `${policy.length} rules` : 'none' };
}

/** What runServer started: a server, or the primary of its workers. */
export interface RunningServer {
  drain(): Promise<void>;
}

/**
 * Starts the server: in this process (--workers 1), or as the primary of N
 * workers (workers.ts) that run this command again as worker i. The flags are
 * checked here first, so a bad one fails once, before any worker starts.
 * `onFatal` hears of workers that keep dying after start.
 */
export async function runServer(s: Settings, onFatal: (err: Error) => void = () => {}): Promise<RunningServer> {
  const log = createLogger(s.choice('log-level', LOG_LEVELS));
  const config = serverConfig(s);
  const workers = s.int('workers', 1, 1024);
  const index = workerIndex();
  if (index !== undefined) {
    const wlog = log.child({ worker: index });
    const server = await runWorker(config, index, workers, wlog);
    watchTlsFiles({ cert: s.require('cert'), key: s.require('key'), ca: s.require(clientCAFlag(s)) }, (pem) => server.updateTls(pem), wlog);
    return server;
  }
  log.info({ config: printable(config), workers }, 'starting kubetunnel server');
  const warning = oneCAWarning(config);
  if (warning) log.warn(warning);
  if (workers > 1) {
    if (config.grpcUds !== undefined) throw new SettingError('workers', 'give --workers 1 with --grpc-uds (a Unix socket is not shared between workers)');
    return runPrimary(config, workers, log, onFatal);
  }
  const server = await startServer(config, log);
  watchTlsFiles({ cert: s.require('cert'), key: s.require('key'), ca: s.require(clientCAFlag(s)) }, (pem) => server.updateTls(pem), log);
  return server;
}
