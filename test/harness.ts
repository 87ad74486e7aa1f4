/**
 * End-to-end harness: runs the `kubetunnel` command as real processes (the
 * built JavaScript; `npm test` builds first), stand-in member apiservers in
 * this process, and drives them with real clients.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { createCA, issueServerCert } from '@kubetunnel/shared';
import { startStandinApiserver, type StandinApiserver, type StandinApiserverOptions } from '@kubetunnel/standin-apiserver';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const CLI = path.join(ROOT, 'packages/cli/bin/kubetunnel.js');
export const execFileP = promisify(execFile);

export interface LogLine {
  msg?: string;
  level?: number;
  [k: string]: unknown;
}

/** A running `kubetunnel` process whose JSON log lines can be awaited. */
export class Proc {
  readonly child: ChildProcess;
  readonly lines: LogLine[] = [];
  readonly stderr: string[] = [];
  readonly exited: Promise<number | null>;
  private waiters: Array<{ pred: (l: LogLine) => boolean; resolve: (l: LogLine) => void }> = [];

  constructor(args: string[], env: NodeJS.ProcessEnv = {}) {
    this.child = spawn(process.execPath, [CLI, ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let buf = '';
    this.child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const text = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let line: LogLine;
        try {
          line = JSON.parse(text) as LogLine;
        } catch {
          line = { msg: text };
        }
        this.lines.push(line);
        this.waiters = this.waiters.filter((w) => (w.pred(line) ? (w.resolve(line), false) : true));
      }
    });
    this.child.stderr!.setEncoding('utf8').on('data', (c: string) => this.stderr.push(c));
    this.exited = once(this.child, 'exit').then(([code]) => code as number | null);
  }

  /** The first log line (past or future) that matches; fails if the process exits first. */
  waitFor(pred: (l: LogLine) => boolean, what = 'log line'): Promise<LogLine> {
    const seen = this.lines.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      this.waiters.push({ pred, resolve });
      this.exited.then((code) =>
        reject(new Error(`process exited (${code}) before ${what}; stderr: ${this.stderr.join('').slice(-2000)}`)),
      );
    });
  }

  /** The port of the listener `name` once its log line says where it listens (`address` host:port). */
  async listenerPort(name: string): Promise<number> {
    const l = await this.waitFor((l) => l.listener === name && typeof l.address === 'string', `${name} listener`);
    return Number(String(l.address).split(':').pop());
  }

  /** Number of log lines that match so far. */
  count(pred: (l: LogLine) => boolean): number {
    return this.lines.filter(pred).length;
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

export function tmpDir(prefix = 'kubetunnel-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export async function cli(...args: string[]): Promise<string> {
  const { stdout } = await execFileP(process.execPath, [CLI, ...args]);
  return stdout;
}

export interface ServerProc {
  proc: Proc;
  /** The tokens of its --token-file: hub credentials, which no member may ever receive. */
  hubTokens: string[];
  proxy: number;
  agent: number;
  health: number;
  admin: number;
  adminUrl: string;
}

/**
 * Starts `kubetunnel server` on free ports and waits until all four listeners
 * are up. Certificates as `certs init` lays them out: server.crt from the hub
 * CA, client-ca.crt verifying agents and clients. A directory of the older
 * one-CA layout (no client-ca.crt) runs with `--ca ca.crt`, the flag's older name.
 */
export async function startServerProc(certDir: string, extra: string[] = [], ports: Partial<Record<'proxy' | 'agent' | 'health' | 'admin', number>> = {}): Promise<ServerProc> {
  const tokenFile = extra[extra.indexOf('--token-file') + 1];
  const hubTokens =
    extra.includes('--token-file') && tokenFile
      ? fs.readFileSync(tokenFile, 'utf8').split('\n').map((l) => l.split(',')[0]!.trim()).filter((t) => t !== '' && !t.startsWith('#'))
      : [];
  const proc = new Proc([
    'server',
    '--cert', path.join(certDir, 'server.crt'),
    '--key', path.join(certDir, 'server.key'),
    ...(fs.existsSync(path.join(certDir, 'client-ca.crt'))
      ? ['--client-ca', path.join(certDir, 'client-ca.crt')]
      : ['--ca', path.join(certDir, 'ca.crt')]),
    '--bind-address', '127.0.0.1',
    '--proxy-port', String(ports.proxy ?? 0),
    '--agent-port', String(ports.agent ?? 0),
    '--health-port', String(ports.health ?? 0),
    '--admin-port', String(ports.admin ?? 0),
    '--grace-period', '2s',
    '--shutdown-delay', '0s',
    '--registration-grace', '0s',
    ...extra,
  ]);
  const [proxy, agent, health, admin] = await Promise.all(['proxy', 'agent', 'health', 'admin'].map((name) => proc.listenerPort(name)));
  return { proc, hubTokens, proxy: proxy!, agent: agent!, health: health!, admin: admin!, adminUrl: `http://127.0.0.1:${admin}` };
}

/** Starts `kubetunnel agent` for a cluster and waits until the server has registered it. */
export async function startAgentProc(
  certDir: string,
  server: ServerProc,
  cluster: string,
  apiserverUrl: string,
  apiserverCAFile: string,
  extra: string[] = [],
): Promise<Proc> {
  const before = server.proc.count((l) => l.msg === 'agent registered' && l.cluster === cluster);
  const proc = new Proc([
    'agent',
    '--server', `wss://localhost:${server.agent}`,
    '--cluster', cluster,
    '--cert', path.join(certDir, `agent-${cluster}.crt`),
    '--key', path.join(certDir, `agent-${cluster}.key`),
    '--ca', path.join(certDir, 'ca.crt'),
    '--apiserver', apiserverUrl,
    '--apiserver-ca', apiserverCAFile,
    '--health-port', '0',
    '--health-bind-address', '127.0.0.1',
    '--grace-period', '2s',
    ...extra,
  ]);
  // Registered: the (before + 1)-th registration line for this cluster.
  let n = 0;
  await server.proc.waitFor((l) => l.msg === 'agent registered' && l.cluster === cluster && ++n > before, `registration of ${cluster}`);
  return proc;
}

export interface ClustersJson {
  serverId: string;
  clusters: Array<{ name: string; openStreams: number; pendingDials: number; agents: Array<{ id: string; openStreams: number }> }>;
}

export async function clustersJson(adminUrl: string): Promise<ClustersJson> {
  const res = await fetch(`${adminUrl}/clusters`);
  return (await res.json()) as ClustersJson;
}

/**
 * Sends raw bytes over TLS to the frontend and returns the response head
 * (status and reason body), for the bad-input cases no client would send.
 */
export async function rawConnect(
  port: number,
  request: string,
  opts: { ca: string; cert?: string; key?: string; host?: string },
): Promise<{ status: number; head: string; body: string }> {
  const socket = tls.connect({ host: opts.host ?? '127.0.0.1', port, ca: opts.ca, servername: 'localhost', cert: opts.cert, key: opts.key });
  await once(socket, 'secureConnect');
  socket.write(request);
  let data = '';
  socket.setEncoding('utf8');
  await new Promise<void>((resolve) => {
    socket.on('data', (c: string) => {
      data += c;
      const end = data.indexOf('\r\n\r\n');
      if (end >= 0) {
        const len = /content-length:\s*(\d+)/i.exec(data.slice(0, end));
        if (!len || data.length >= end + 4 + Number(len[1])) resolve();
      }
    });
    socket.on('end', resolve);
    socket.on('error', () => resolve());
  });
  socket.destroy();
  const end = data.indexOf('\r\n\r\n');
  const head = end >= 0 ? data.slice(0, end) : data;
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
  return { status, head, body: end >= 0 ? data.slice(end + 4) : '' };
}

/** Runs a command and resolves with its output; rejects with stderr on failure. */
export async function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { env: { ...process.env, ...env }, timeout: 30_000 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.stderr || e.message}`);
  }
}

export interface Member {
  apiserver: StandinApiserver;
  /** The member apiserver's CA, as a file for --apiserver-ca and curl. */
  caFile: string;
  /** What its agent dials: https://localhost:PORT (a name on the member's certificate; 127.0.0.1, the hub's, is not). */
  url: string;
  /** Every Authorization / Proxy-Authorization value the member apiserver received. */
  credentials: string[];
  agent: Proc;
}

/** The hub tokens that `credentials` (header values a member received) contain, in any encoding kubectl or curl use. */
export function hubTokensIn(credentials: string[], hubTokens: string[]): string[] {
  const seen = new Set<string>();
  for (const value of credentials) {
    const basic = /^\s*Basic\s+(\S+)/i.exec(value);
    const texts = [value, basic ? Buffer.from(basic[1]!, 'base64').toString('utf8') : ''];
    for (const t of hubTokens) if (texts.some((x) => x.includes(t))) seen.add(t);
  }
  return [...seen];
}

/**
 * Stops the agents, then the server, then the member apiservers (agents
 * first: no reconnect storms). Then checks that no member apiserver ever
 * received a hub token: credentials never cross the hub.
 */
export async function stopMembers(server: ServerProc | undefined, members: Iterable<Member>): Promise<void> {
  const all = [...members];
  for (const m of all) await m.agent.stop();
  await server?.proc.stop();
  for (const m of all) await m.apiserver.close();
  const leaked = hubTokensIn(all.flatMap((m) => m.credentials), server?.hubTokens ?? []);
  if (leaked.length > 0) throw new Error(`a member apiserver received ${leaked.length} hub token(s)`);
}

/**
 * Names on a member apiserver's certificate: the in-cluster names (as real
 * ones carry), its cluster name, and localhost for its agent. Never
 * 127.0.0.1: that is the hub's address in every test kubeconfig, and no
 * member certificate may pass for the hub.
 */
export function memberCertNames(name: string): string[] {
  return ['kubernetes.default.svc', 'kubernetes.default', 'kubernetes', name, 'localhost'];
}

/**
 * A member cluster: a stand-in apiserver with its own CA (its certificate
 * carries kubernetes.default.svc, as real ones do), an agent certificate,
 * and a `kubetunnel agent` process registered with `server`. The stand-in
 * records every credential it receives (see stopMembers).
 */
export async function startMember(o: {
  dir: string;
  certDir: string;
  server: ServerProc;
  name: string;
  tokens: StandinApiserverOptions['tokens'];
  ca?: string;
  impersonators?: string[];
  agentArgs?: string[];
}): Promise<Member> {
  const ca = createCA({ commonName: `${o.name} CA` });
  const cert = issueServerCert(ca, { sans: memberCertNames(o.name) });
  const caFile = path.join(o.dir, `${o.name}-ca.crt`);
  fs.writeFileSync(caFile, ca.cert);
  const credentials: string[] = [];
  const apiserver = await startStandinApiserver({
    cluster: o.name,
    cert: cert.cert,
    key: cert.key,
    tokens: o.tokens,
    onCredential: (_header, value) => credentials.push(value),
    ...(o.ca ? { ca: o.ca } : {}),
    ...(o.impersonators ? { impersonators: o.impersonators } : {}),
  });
  await cli('certs', 'agent', '--dir', o.certDir, '--cluster', o.name);
  const url = `https://localhost:${apiserver.port}`;
  const agent = await startAgentProc(o.certDir, o.server, o.name, url, caFile, o.agentArgs);
  return { apiserver, caFile, url, credentials, agent };
}

/** The service-account token an L7 member's agent sends its apiserver, and the user it names there. */
export const L7_AGENT_TOKEN = 'agent-sa-token';
export const l7AgentUser = (cluster: string) => `system:serviceaccount:kubetunnel:agent-${cluster}`;

/**
 * A member whose agent serves L7 too: its stand-in knows the agent's
 * service-account token (L7_AGENT_TOKEN, user l7AgentUser(name)) and lets
 * that user impersonate; the agent reads the token from DIR/agent-token.
 */
export async function startL7Member(o: { dir: string; certDir: string; server: ServerProc; name: string }): Promise<Member> {
  const tokenFile = path.join(o.dir, 'agent-token');
  fs.writeFileSync(tokenFile, L7_AGENT_TOKEN + '\n');
  return startMember({
    ...o,
    tokens: { [L7_AGENT_TOKEN]: { user: l7AgentUser(o.name), groups: ['system:serviceaccounts'] } },
    impersonators: [l7AgentUser(o.name)],
    agentArgs: ['--apiserver-token-file', tokenFile],
  });
}

/**
 * Asserts that the server holds no open stream and no pending dial. Streams
 * end asynchronously after a client goes, so it asks again for a while first.
 */
export async function expectIdle(adminUrl: string, withinMs = 5000): Promise<void> {
  const deadline = Date.now() + withinMs;
  for (;;) {
    const busy = (await clustersJson(adminUrl)).clusters
      .filter((c) => c.openStreams > 0 || c.pendingDials > 0)
      .map((c) => `${c.name}: ${c.openStreams} open, ${c.pendingDials} dialing`);
    if (busy.length === 0) return;
    if (Date.now() > deadline) throw new Error(`server not idle after the test: ${busy.join('; ')}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The agent flags `kubetunnel token create` prints: `--join-token T --ca-cert-hash sha256:H`, and the token's id and expiry. */
export async function createJoinToken(certDir: string, cluster: string, ...extra: string[]): Promise<{ token: string; hash: string; id: string; expiresAt: number }> {
  const out = await cli('token', 'create', '--dir', certDir, '--cluster', cluster, ...extra);
  const flags = /^--join-token (\S+) --ca-cert-hash (sha256:[0-9a-f]{64})$/m.exec(out);
  const head = /^join token ([0-9a-f]+) for cluster \S+, valid until (\S+),/m.exec(out);
  if (!flags || !head) throw new Error(`token create printed no agent flags:\n${out}`);
  return { token: flags[1]!, hash: flags[2]!, id: head[1]!, expiresAt: Date.parse(head[2]!.replace(/,$/, '')) };
}

/** A stand-in member apiserver with its own CA (no agent yet): for agents that join with a token. */
export async function startStandin(dir: string, name: string, tokens: StandinApiserverOptions['tokens']): Promise<{ apiserver: StandinApiserver; caFile: string; url: string }> {
  const ca = createCA({ commonName: `${name} CA` });
  const cert = issueServerCert(ca, { sans: memberCertNames(name) });
  const caFile = path.join(dir, `${name}-ca.crt`);
  fs.writeFileSync(caFile, ca.cert);
  const apiserver = await startStandinApiserver({ cluster: name, cert: cert.cert, key: cert.key, tokens });
  return { apiserver, caFile, url: `https://localhost:${apiserver.port}` };
}

/** `kubetunnel agent` in join mode (no certificate files): --join-token, --ca-cert-hash, --state-dir. */
export function joinAgentProc(o: {
  server: ServerProc;
  cluster: string;
  token?: string;
  hash: string;
  stateDir: string;
  apiserver: { url: string; caFile: string };
  agentId?: string;
  extra?: string[];
}): Proc {
  return new Proc([
    'agent',
    '--server', `wss://localhost:${o.server.agent}`,
    '--cluster', o.cluster,
    ...(o.token ? ['--join-token', o.token] : []),
    '--ca-cert-hash', o.hash,
    '--state-dir', o.stateDir,
    '--apiserver', o.apiserver.url,
    '--apiserver-ca', o.apiserver.caFile,
    '--agent-id', o.agentId ?? `${o.cluster}-agent`,
    '--health-port', '0',
    '--health-bind-address', '127.0.0.1',
    '--grace-period', '2s',
    ...(o.extra ?? []),
  ]);
}

/** A hub that accepts join tokens (--client-ca-key, a revocation file), stand-in members without agents, and the agents a test starts. */
export interface JoinHub {
  dir: string;
  certDir: string;
  /** The --join-revocations file (empty at start). */
  revocations: string;
  server: ServerProc;
  standins: Map<string, { apiserver: StandinApiserver; caFile: string; url: string }>;
  /** Agents started by the test; stopAgents() stops them after each test. */
  agents: Proc[];
  /** Stops the agents, then asserts the server holds no stream. */
  stopAgents(): Promise<void>;
  close(): Promise<void>;
}

/** The member token of JoinHub's stand-ins (user alice, group developers), and the hub token (hub-token) of the same identity. */
export const JOIN_MEMBER_TOKEN = 'member-token';

export async function startJoinHub(members: string[], serverArgs: string[] = []): Promise<JoinHub> {
  const dir = tmpDir();
  const certDir = path.join(dir, 'certs');
  await cli('certs', 'init', '--dir', certDir);
  fs.writeFileSync(path.join(dir, 'tokens.csv'), 'hub-token,alice,1,"developers"\n');
  const revocations = path.join(dir, 'revoked-tokens');
  fs.writeFileSync(revocations, '');
  const server = await startServerProc(certDir, [
    '--token-file', path.join(dir, 'tokens.csv'),
    '--client-ca-key', path.join(certDir, 'client-ca.key'),
    '--join-revocations', revocations,
    ...serverArgs,
  ]);
  const standins = new Map<string, { apiserver: StandinApiserver; caFile: string; url: string }>();
  for (const name of members) standins.set(name, await startStandin(dir, name, { [JOIN_MEMBER_TOKEN]: { user: 'alice', groups: ['developers'] } }));
  const agents: Proc[] = [];
  const stopAgents = async () => {
    for (const a of agents.splice(0)) await a.stop();
    await expectIdle(server.adminUrl);
  };
  return {
    dir,
    certDir,
    revocations,
    server,
    standins,
    agents,
    stopAgents,
    async close() {
      for (const a of agents.splice(0)) await a.stop();
      await server.proc.stop();
      for (const s of standins.values()) await s.apiserver.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
