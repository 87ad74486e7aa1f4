/**
 * The parties of a run, every one its own process: certificates, the
 * stand-in upstream, `kubetunnel server`, `kubetunnel agent`s, processes of
 * many in-process agents (bench/src/agents.ts), the node relay
 * (bench/src/relay.ts) and the load client (bench/src/client.ts).
 */
import { execFile, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { Route } from './common.js';
import { line, start, stop } from './procs.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = path.join(ROOT, 'packages/cli/bin/kubetunnel.js');
const DIST = fileURLToPath(new URL('.', import.meta.url));
const TOKEN = 'bench-token';

/** Short grace periods: the run stops its processes as soon as it is done. */
const GRACE = ['--grace-period', '2s'];

const execFileP = promisify(execFile);
function cli(...args: string[]): Promise<unknown> {
  return execFileP(process.execPath, [CLI, ...args]).catch((err: { stderr?: string }) => {
    throw new Error(`kubetunnel ${args.join(' ')}: ${err.stderr ?? String(err)}`);
  });
}

export interface Pki {
  dir: string;
  ca: string;
  file(name: string): string;
}

/**
 * A CA, the server certificate (also the upstream's) and an agent
 * certificate per cluster, issued a few at a time (one `certs` process each).
 */
export async function makeCerts(dir: string, clusters: string[]): Promise<Pki> {
  await cli('certs', 'init', '--dir', dir);
  let next = 0;
  await Promise.all(
    os.cpus().map(async () => {
      while (next < clusters.length) await cli('certs', 'agent', '--dir', dir, '--cluster', clusters[next++]!);
    }),
  );
  return { dir, ca: fs.readFileSync(path.join(dir, 'ca.crt'), 'utf8'), file: (name) => path.join(dir, name) };
}

/** The TLS upstream standing in for an apiserver (HTTP/2 and HTTP/1.1, or `http1` only); resolves with its port. */
export async function startUpstream(pki: Pki, protocols: 'h2' | 'http1' = 'h2'): Promise<{ proc: ChildProcess; port: number }> {
  const proc = start(path.join(DIST, 'upstream.js'), [pki.file('server.crt'), pki.file('server.key'), protocols]);
  const { port } = await line<{ port: number }>(proc, (o) => typeof o.port === 'number', 'upstream');
  return { proc, port };
}

/**
 * The node relay (bench/src/relay.ts): a front and a back process between
 * the client and the upstream; resolves with the route through it.
 */
export async function startRelay(pki: Pki, upstreamPort: number): Promise<Route> {
  const port = async (args: string[], what: string) =>
    (await line<{ port: number }>(start(path.join(DIST, 'relay.js'), args), (o) => typeof o.port === 'number', what)).port;
  const back = await port(['back', pki.dir, String(upstreamPort)], 'relay back');
  const front = await port(['front', pki.dir, String(back)], 'relay front');
  return { kind: 'proxy', proxyPort: front, cluster: 'upstream', token: 'none', hubCA: pki.ca };
}

/**
 * The node chain of the L7 scenarios (bench/src/l7relay.ts): an "agent" and
 * a "hub" process in series in front of the upstream.
 */
export async function startNodeL7Chain(pki: Pki, upstreamPort: number): Promise<{ hub: ChildProcess; agent: ChildProcess; port: number }> {
  const one = async (next: number, what: string) => {
    const proc = start(path.join(DIST, 'l7relay.js'), [pki.dir, String(next)]);
    return { proc, port: (await line<{ port: number }>(proc, (o) => typeof o.port === 'number', what)).port };
  };
  const agent = await one(upstreamPort, 'node chain agent');
  const hub = await one(agent.port, 'node chain hub');
  return { hub: hub.proc, agent: agent.proc, port: hub.port };
}

export interface Server {
  proc: ChildProcess;
  ports: { proxy: number; agent: number; health: number; admin: number; grpc: number };
  /** The bearer token the server accepts (L7 requests carry it). */
  token: string;
  /** The route of a CONNECT to `cluster` through this server. */
  route(cluster: string): Route;
  /** The route to `cluster` through this server's Konnectivity ProxyService. */
  grpcRoute(cluster: string): Route;
  /** Polls GET /clusters until `want` accepts the agent count of each cluster. */
  waitAgents(want: (agents: Map<string, number>) => boolean): Promise<void>;
}

/** The server process; `extra` flags go last (e.g. --workers). */
export async function startServer(pki: Pki, tmp: string, extra: string[] = []): Promise<Server> {
  const tokens = path.join(tmp, 'tokens.csv');
  fs.writeFileSync(tokens, `${TOKEN},bench,1,"bench"\n`);
  const proc = start(CLI, [
    'server', '--cert', pki.file('server.crt'), '--key', pki.file('server.key'), '--client-ca', pki.file('client-ca.crt'),
    '--bind-address', '127.0.0.1', '--proxy-port', '0', '--agent-port', '0', '--health-port', '0', '--admin-port', '0',
    '--grpc-port', '0', '--token-file', tokens, '--max-streams-per-client', '100000', '--log-level', 'info', '--shutdown-delay', '0s', '--registration-grace', '0s', ...GRACE,
    ...extra,
  ]);
  const ports: Record<string, number> = {};
  await line(
    proc,
    (l) => {
      if (typeof l.listener === 'string' && typeof l.address === 'string') ports[l.listener] = Number(l.address.slice(l.address.lastIndexOf(':') + 1));
      return ['proxy', 'agent', 'health', 'admin', 'grpc'].every((n) => ports[n] !== undefined);
    },
    'server listeners',
  );
  const admin = `http://127.0.0.1:${ports.admin}/clusters`;
  return {
    proc,
    ports: ports as Server['ports'],
    token: TOKEN,
    route: (cluster) => ({ kind: 'proxy', proxyPort: ports.proxy!, cluster, token: TOKEN, hubCA: pki.ca }),
    grpcRoute: (cluster) => ({ kind: 'grpc', grpcPort: ports.grpc!, cluster, token: TOKEN, hubCA: pki.ca }),
    async waitAgents(want) {
      for (;;) {
        const body = (await (await fetch(admin)).json()) as { clusters: Array<{ name: string; agents: unknown[] }> };
        if (want(new Map(body.clusters.map((c) => [c.name, c.agents.length])))) return;
        await new Promise((r) => setTimeout(r, 100));
      }
    },
  };
}

/** The agents' own token toward their apiserver (L7), for every agent of the run. */
export const AGENT_APISERVER_TOKEN = 'bench-agent-token';

/** The file holding AGENT_APISERVER_TOKEN, written once per run. */
export function agentTokenFile(pki: Pki): string {
  const file = path.join(pki.dir, 'apiserver-token');
  if (!fs.existsSync(file)) fs.writeFileSync(file, `${AGENT_APISERVER_TOKEN}\n`, { mode: 0o600 });
  return file;
}

/**
 * One `kubetunnel agent` process for `cluster`. It serves L7 streams too: it
 * trusts the upstream's CA and sends it a token of its own (the stand-in
 * upstream reads neither).
 */
export function startAgent(pki: Pki, server: Server, cluster: string, upstreamPort: number): ChildProcess {
  const tokenFile = agentTokenFile(pki);
  return start(CLI, [
    'agent', '--server', `wss://localhost:${server.ports.agent}`, '--cluster', cluster,
    '--apiserver-ca', pki.file('ca.crt'), '--apiserver-token-file', tokenFile,
    '--cert', pki.file(`agent-${cluster}.crt`), '--key', pki.file(`agent-${cluster}.key`), '--ca', pki.file('ca.crt'),
    '--apiserver', `https://127.0.0.1:${upstreamPort}`, '--health-port', '0', '--log-level', 'warn', ...GRACE,
  ]);
}

/**
 * A process running `perCluster` agent instances for each of `clusters`
 * (bench/src/agents.ts); resolves once every one has its tunnel. Ending its
 * standard input stops it.
 */
export async function startAgentPool(
  pki: Pki,
  server: Server,
  upstreamPort: number,
  clusters: string[],
  perCluster: number,
  idPrefix: string,
): Promise<ChildProcess> {
  const job = {
    server: `wss://localhost:${server.ports.agent}`,
    certDir: pki.dir,
    clusters,
    perCluster,
    apiserver: `https://127.0.0.1:${upstreamPort}`,
    idPrefix,
  };
  const proc = start(path.join(DIST, 'agents.js'), [JSON.stringify(job)], { stdin: true });
  await line(proc, (o) => o.ready === true, `agent pool ${idPrefix}`);
  return proc;
}

/**
 * The load client (bench/src/client.ts) for one job. `result` is its JSON
 * result line; lines with a `phase` field are progress, not the result.
 */
export function startClient<T>(job: Record<string, unknown>): { proc: ChildProcess; result: Promise<T> } {
  const proc = start(path.join(DIST, 'client.js'), [JSON.stringify(job)]);
  return { proc, result: line<T>(proc, (o) => o.phase === undefined, `client ${String(job.job)}`) };
}

export function client<T>(job: Record<string, unknown>): Promise<T> {
  return startClient<T>(job).result;
}

/** A long-running client job that prints {"ready": true, ...} and ends when its standard input does. */
export async function clientHolding<T>(job: Record<string, unknown>): Promise<{ proc: ChildProcess; ready: T }> {
  const proc = start(path.join(DIST, 'client.js'), [JSON.stringify(job)], { stdin: true });
  return { proc, ready: await line<T>(proc, (o) => o.ready === true, `client ${String(job.job)}`) };
}

/** Ends a process that stops when its standard input ends (agent pools, holding clients). */
export async function endInput(proc: ChildProcess): Promise<void> {
  proc.stdin!.end();
  if (proc.exitCode === null && proc.signalCode === null) {
    const t = setTimeout(() => void stop(proc), 15_000);
    await once(proc, 'exit');
    clearTimeout(t);
  }
}
