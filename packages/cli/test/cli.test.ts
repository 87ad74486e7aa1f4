import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { afterEach, describe, expect, it } from 'vitest';
import { PassThrough } from 'node:stream';
import { pino } from 'pino';
import { LOG_LEVELS, createCA, issueServerCert } from '@kubetunnel/shared';
import { buildKubeconfig } from '../src/commands/kubeconfig.js';
import { pingInterval } from '../src/commands/server.js';
import { Settings, SettingError, parseDuration } from '../src/options.js';
import { watchTlsFiles } from '../src/reload.js';

const dirs: string[] = [];
const tmp = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

describe('settings: flag > KUBETUNNEL_* > config file > default', () => {
  const make = (flags: Record<string, unknown>, typed: string[], env: Record<string, string>, file?: string) =>
    new Settings(flags, (n) => typed.includes(n), env, file);

  it('takes each source in order', () => {
    const d = tmp();
    const file = path.join(d, 'c.yaml');
    fs.writeFileSync(file, 'proxy-port: 7000\nagentPort: 7001\nhealth-port: 7002\n');
    const flags = { proxyPort: '1', agentPort: '8091', healthPort: '8092', adminPort: '8095' };
    const s = make(flags, ['proxy-port'], { KUBETUNNEL_AGENT_PORT: '6001' }, file);
    expect(s.port('proxy-port')).toBe(1); // typed flag
    expect(s.port('agent-port')).toBe(6001); // environment
    expect(s.port('health-port')).toBe(7002); // file
    expect(s.port('admin-port')).toBe(8095); // default
  });

  it('names the flag in every error', () => {
    const s = make({ proxyPort: '99999', grace: 'soon', cert: '/nonexistent' }, ['proxy-port', 'grace', 'cert'], {});
    expect(() => s.port('proxy-port')).toThrow(new SettingError('proxy-port', 'want a port from 0 to 65535, got "99999"'));
    expect(() => s.duration('grace')).toThrow(/--grace: want a duration/);
    expect(() => s.requireFile('cert')).toThrow(/--cert: cannot read \/nonexistent: ENOENT/);
    expect(() => s.require('missing')).toThrow(/--missing: is required/);
  });

  it('takes a log level from a flag, a variable or the file only if --log-level offers it', () => {
    expect(make({ logLevel: 'info' }, [], { KUBETUNNEL_LOG_LEVEL: 'debug' }).choice('log-level', LOG_LEVELS)).toBe('debug');
    expect(make({ logLevel: 'info' }, [], {}).choice('log-level', LOG_LEVELS)).toBe('info');
    expect(() => make({ logLevel: 'info' }, [], { KUBETUNNEL_LOG_LEVEL: 'loud' }).choice('log-level', LOG_LEVELS)).toThrow(
      new SettingError('log-level', 'want one of trace, debug, info, warn, error, silent, got "loud"'),
    );
  });

  it('reads lists from repeated flags, YAML lists and comma-separated variables', () => {
    expect(make({ server: ['a', 'b'] }, ['server'], {}).list('server')).toEqual(['a', 'b']);
    expect(make({ server: [] }, [], { KUBETUNNEL_SERVER: 'x, y' }).list('server')).toEqual(['x', 'y']);
  });

  it('takes a --ping-interval from 1s to 10m', () => {
    expect(pingInterval(make({ pingInterval: '10s' }, [], {}))).toBe(10_000);
    expect(pingInterval(make({ pingInterval: '10s' }, [], { KUBETUNNEL_PING_INTERVAL: '10m' }))).toBe(600_000);
    expect(() => pingInterval(make({ pingInterval: '500ms' }, ['ping-interval'], {}))).toThrow(
      new SettingError('ping-interval', 'want 1s to 10m, got "500ms"'),
    );
    expect(() => pingInterval(make({ pingInterval: '11m' }, ['ping-interval'], {}))).toThrow(/--ping-interval: want 1s to 10m/);
  });

  it('parses durations', () => {
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('30s')).toBe(30_000);
    expect(parseDuration('2m')).toBe(120_000);
    expect(parseDuration('5')).toBe(5000);
    expect(parseDuration('soon')).toBeUndefined();
  });
});

describe('kubeconfig', () => {
  const input = {
    server: 'https://hub.example:8090',
    hubCA: 'HUB-CA',
    clusters: [{ name: 'member-1', memberCA: 'M1-CA' }, { name: 'member-2' }],
    l7ServerNameSuffix: 'clusters.kubetunnel',
  };
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const cluster = (kc: { clusters: Array<{ name: string; cluster: Record<string, string> }> }, name: string) =>
    kc.clusters.find((c) => c.name === name)!.cluster;

  it('CONNECT mode: the cluster and hub token in the proxy URL, no tls-server-name, the member token for the member only', () => {
    const kc = parseYaml(buildKubeconfig({ ...input, modes: ['connect'], credentials: { token: 'tok' }, member: { token: 'mtok' } }));
    expect(cluster(kc, 'member-1')).toEqual({
      server: 'https://kubernetes.default.svc',
      'proxy-url': 'https://member-1:tok@hub.example:8090',
      'certificate-authority-data': b64('HUB-CA\nM1-CA'),
    });
    expect(cluster(kc, 'member-2')['proxy-url']).toBe('https://member-2:tok@hub.example:8090');
    expect(kc.users).toEqual([{ name: 'kubetunnel-connect', user: { token: 'mtok' } }]);
    expect(kc.contexts.map((c: { name: string }) => c.name)).toEqual(['member-1', 'member-2']);
  });

  it('CONNECT mode never gives the hub token to the member: without a member credential the user is empty and the file says so', () => {
    const text = buildKubeconfig({ ...input, modes: ['connect'], credentials: { token: 'tok' } });
    const kc = parseYaml(text);
    expect(kc.users).toEqual([{ name: 'kubetunnel-connect', user: {} }]);
    expect(text.startsWith('#')).toBe(true);
    expect(text).toContain('carry no member credential');
    expect(text.match(/\btok\b/g)).toEqual(['tok', 'tok']); // in the two proxy URLs, nowhere else
  });

  it('CONNECT mode: a member client certificate, an exec plugin, or a member server URL', () => {
    const cert = parseYaml(buildKubeconfig({ ...input, modes: ['connect'], credentials: { token: 'tok' }, member: { clientCert: 'MC', clientKey: 'MK' } }));
    expect(cert.users[0].user).toEqual({ 'client-certificate-data': b64('MC'), 'client-key-data': b64('MK') });
    const exec = parseYaml(buildKubeconfig({ ...input, modes: ['connect'], credentials: { token: 'tok' }, member: { exec: { command: 'get-token', args: ['--cluster', 'x'] } } }));
    expect(exec.users[0].user.exec).toEqual({ apiVersion: 'client.authentication.k8s.io/v1', command: 'get-token', args: ['--cluster', 'x'], interactiveMode: 'IfAvailable' });
    const own = parseYaml(buildKubeconfig({ ...input, clusters: [{ name: 'member-1', memberServer: 'https://api.member-1.example:6443' }], modes: ['connect'], credentials: { token: 'tok' } }));
    expect(cluster(own, 'member-1').server).toBe('https://api.member-1.example:6443');
    expect(() => buildKubeconfig({ ...input, modes: ['connect'], credentials: { clientCert: 'C', clientKey: 'K' }, member: { clientCert: 'MC', clientKey: 'MK' } })).toThrow(
      /one client certificate/,
    );
  });

  it('L7 mode: /clusters/<name> with the cluster in the server name; both modes side by side', () => {
    const text = buildKubeconfig({ ...input, modes: ['connect', 'l7'], credentials: { clientCert: 'C', clientKey: 'K' } });
    const kc = parseYaml(text);
    expect(cluster(kc, 'member-2-l7')).toEqual({
      server: 'https://hub.example:8090/clusters/member-2',
      'certificate-authority-data': b64('HUB-CA'),
      'tls-server-name': 'member-2.clusters.kubetunnel',
    });
    // A certificate user: the proxy URL carries only the cluster, with an empty password.
    expect(cluster(kc, 'member-2')['proxy-url']).toBe('https://member-2@hub.example:8090');
    expect(cluster(kc, 'member-2')['tls-server-name']).toBeUndefined();
    expect(kc.users.map((u: { user: object }) => u.user)).toEqual([
      { 'client-certificate-data': b64('C'), 'client-key-data': b64('K') },
      { 'client-certificate-data': b64('C'), 'client-key-data': b64('K') },
    ]);
    expect(kc.contexts).toHaveLength(4);
    expect(text).not.toContain('carry no member credential');
  });
});

describe('certificate reload', () => {
  it('applies a new valid set, and keeps the old one when the new one does not load', async () => {
    const d = tmp();
    const ca = createCA();
    const write = (pem: { cert: string; key: string }) => {
      fs.writeFileSync(path.join(d, 'tls.crt'), pem.cert);
      fs.writeFileSync(path.join(d, 'tls.key'), pem.key);
    };
    write(issueServerCert(ca, { sans: ['a'] }));
    fs.writeFileSync(path.join(d, 'ca.crt'), ca.cert);
    const applied: string[] = [];
    const events = new (await import('node:events')).EventEmitter();
    const logLines = new PassThrough();
    logLines.on('data', (d: Buffer) => d.toString().includes('do not load') && events.emit('refused'));
    const stop = watchTlsFiles(
      { cert: path.join(d, 'tls.crt'), key: path.join(d, 'tls.key'), ca: path.join(d, 'ca.crt') },
      (pem) => {
        applied.push(pem.cert);
        events.emit('applied');
      },
      pino({ level: 'warn' }, logLines),
      20,
    );
    try {
      const next = issueServerCert(ca, { sans: ['b'] });
      const got = once(events, 'applied');
      write(next);
      await got;
      expect(applied.at(-1)).toBe(next.cert);
      // A key that does not match the certificate is refused and not applied.
      const count = applied.length;
      const refused = once(events, 'refused');
      fs.writeFileSync(path.join(d, 'tls.key'), issueServerCert(ca, { sans: ['c'] }).key);
      await refused;
      expect(applied).toHaveLength(count);
      const later = issueServerCert(ca, { sans: ['d'] });
      const got2 = once(events, 'applied');
      write(later);
      await got2;
      expect(applied.at(-1)).toBe(later.cert);
    } finally {
      stop();
    }
  });
});

describe('server limits of the Konnectivity listeners', () => {
  it('--grpc-port has the proxy port\'s limits, --anp-agent-port the agent port\'s, from the same flags', async () => {
    const { serverLimits } = await import('../src/commands/server.js');
    const flags = {
      maxConnections: '300',
      maxPendingConnections: '30',
      maxPendingPerSource: '3',
      maxAgentConnections: '200',
      handshakeTimeout: '4s',
      headerTimeout: '5s',
      idleTimeout: '6s',
    };
    const limits = serverLimits(new Settings(flags, () => true, {}, undefined));
    expect(limits.grpc).toEqual(limits.proxy);
    expect(limits['anp-agent']).toEqual(limits.agent);
    expect(limits.grpc).toMatchObject({ maxConnections: 300, maxPending: 30, maxPendingPerSource: 3, handshakeTimeoutMs: 4000, headerTimeoutMs: 5000, idleTimeoutMs: 6000 });
    expect(limits['anp-agent']).toMatchObject({ maxConnections: 200, maxPendingPerSource: 3, handshakeTimeoutMs: 4000 });
  });
});
