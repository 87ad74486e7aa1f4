/**
 * Pieces for the high-availability tests: HAProxy in front of several
 * `kubetunnel server` processes, agents that reach them through it, and
 * clients that go through the hub to a member's apiserver (CONNECT, then
 * TLS end to end) the way a federation controller does.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import https from 'node:https';
import type { IncomingMessage } from 'node:http';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { Proc, clustersJson } from './harness.js';

/** Ports below the ephemeral range, so a process restarted on its port finds it free (shared with the benchmarks). */
export { lowFreePorts as freePorts } from '../bench/src/procs.js';

export interface Backend {
  name: string;
  port: number;
  /** Plain-HTTP port whose `checkPath` decides whether the backend gets new connections. */
  healthPort: number;
}

/** HAProxy (Debian's) in TCP mode, started in the foreground with a config written for it. */
export class HAProxy {
  private constructor(
    readonly child: ChildProcess,
    private readonly stderr: string[],
    /** The runtime API's socket (HAProxy's "stats socket"). */
    private readonly socket: string,
  ) {}

  static async start(dir: string, frontends: Array<{ name: string; port: number; checkPath: string; backends: Backend[] }>): Promise<HAProxy> {
    const socket = path.join(dir, 'haproxy.sock');
    const lines = [
      'global',
      '  maxconn 4000',
      `  stats socket ${socket} mode 600 level operator`,
      'defaults',
      '  mode tcp',
      '  timeout connect 2s',
      '  timeout client 1h',
      '  timeout server 1h',
      '  timeout check 1s',
      // A connection refused by a backend that has just gone away is tried on another.
      '  retries 2',
      '  option redispatch',
    ];
    for (const f of frontends) {
      lines.push(`frontend ${f.name}`, `  bind 127.0.0.1:${f.port}`, `  default_backend ${f.name}-servers`);
      lines.push(`backend ${f.name}-servers`, '  balance roundrobin', `  option httpchk GET ${f.checkPath}`);
      for (const b of f.backends) lines.push(`  server ${b.name} 127.0.0.1:${b.port} check port ${b.healthPort} inter 200ms fall 1 rise 1`);
    }
    const file = path.join(dir, 'haproxy.cfg');
    fs.writeFileSync(file, lines.join('\n') + '\n');
    const child = spawn('haproxy', ['-db', '-f', file], { stdio: ['ignore', 'ignore', 'pipe'] });
    const stderr: string[] = [];
    child.stderr!.setEncoding('utf8').on('data', (c: string) => stderr.push(c));
    const h = new HAProxy(child, stderr, socket);
    // Ready when every frontend accepts connections.
    for (const f of frontends) await h.waitListening(f.port);
    return h;
  }

  private async waitListening(port: number): Promise<void> {
    for (let i = 0; i < 200; i++) {
      if (this.child.exitCode !== null) throw new Error(`haproxy exited: ${this.stderr.join('')}`);
      const ok = await new Promise<boolean>((resolve) => {
        const s = net.connect(port, '127.0.0.1');
        s.once('connect', () => (s.destroy(), resolve(true)));
        s.once('error', () => resolve(false));
      });
      if (ok) return;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error(`haproxy did not listen on ${port}: ${this.stderr.join('')}`);
  }

  /**
   * Resolves once HAProxy routes new connections of `backend` to every one
   * of its servers (each passed its health check: for kubetunnel's proxy
   * port, the replica is ready), as a rolling update waits for readiness.
   */
  async waitAllUp(backend: string, withinMs = 30_000): Promise<void> {
    const deadline = Date.now() + withinMs;
    for (;;) {
      // "show servers state": one line per server; the 6th field is its operational state, 2 = running.
      const answer = await this.command(`show servers state ${backend}`);
      const states = answer.split('\n').filter((l) => /^\d+ /.test(l)).map((l) => l.split(' ')[5]);
      if (states.length > 0 && states.every((s) => s === '2')) return;
      if (Date.now() > deadline) throw new Error(`${backend}: not every server up in HAProxy:\n${answer}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** One command on the runtime API; resolves with the answer (empty if the socket could not be reached). */
  private async command(line: string): Promise<string> {
    const s = net.connect(this.socket);
    s.on('error', () => {});
    s.end(`${line}\n`);
    let answer = '';
    s.setEncoding('utf8').on('data', (d: string) => (answer += d));
    await once(s, 'close');
    return answer;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    await once(this.child, 'exit');
  }
}

export interface HubRoute {
  /** The hub's proxy port (or a balancer in front of it). */
  port: number;
  hubCA: string;
  token: string;
}

export interface MemberRoute {
  cluster: string;
  memberCA: string;
  memberToken: string;
}

export class RefusedError extends Error {
  constructor(
    readonly status: number,
    /** Seconds the answer asked to wait before trying again, if it said. */
    readonly retryAfter: number | undefined,
    reason: string,
  ) {
    super(`CONNECT answered ${status}: ${reason}`);
  }
}

/**
 * A request to a member's apiserver through the hub: CONNECT, then TLS with
 * the member (its own CA and token), then one HTTP request. Resolves with
 * the response (its body not yet read); rejects with RefusedError when the
 * hub refuses the CONNECT.
 */
export async function viaHub(hub: HubRoute, member: MemberRoute, reqPath: string): Promise<IncomingMessage> {
  const outer = tls.connect({ host: '127.0.0.1', port: hub.port, ca: hub.hubCA, servername: 'localhost' });
  outer.on('error', () => {});
  try {
    await new Promise<void>((resolve, reject) => {
      outer.once('secureConnect', resolve);
      outer.once('close', () => reject(new Error('connection to the hub closed before TLS was up')));
    });
    outer.write(`CONNECT ${member.cluster}:443 HTTP/1.1\r\nHost: ${member.cluster}:443\r\nProxy-Authorization: Bearer ${hub.token}\r\n\r\n`);
    let head = '';
    while (!head.includes('\r\n\r\n')) {
      const chunk = outer.read() as Buffer | null;
      if (chunk) {
        head += chunk.toString('latin1');
        continue;
      }
      await Promise.race([once(outer, 'readable'), once(outer, 'close').then(() => Promise.reject(new Error('hub closed before answering')))]);
    }
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
    if (status !== 200) {
      const retryAfter = /\r\nRetry-After: (\d+)/i.exec(head)?.[1];
      throw new RefusedError(status, retryAfter === undefined ? undefined : Number(retryAfter), head.slice(head.indexOf('\r\n\r\n') + 4).trim());
    }
  } catch (err) {
    outer.destroy();
    throw err;
  }
  return new Promise<IncomingMessage>((resolve, reject) => {
    const req = https.request({
      host: 'kubernetes.default.svc',
      path: reqPath,
      headers: { Authorization: `Bearer ${member.memberToken}` },
      // No agent: this connection is made here, for this one request.
      createConnection: () => tls.connect({ socket: outer, servername: 'kubernetes.default.svc', ca: member.memberCA }),
    });
    req.once('response', resolve);
    req.once('error', (err) => {
      outer.destroy();
      reject(err);
    });
    req.end();
  });
}

/** Reads a whole response body; rejects if the connection ends before it is complete. */
export async function readBody(res: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  if (!res.complete) throw new Error('response ended before its body was complete');
  return Buffer.concat(chunks);
}

/** Starts `kubetunnel agent` for a cluster through a balancer. */
export function agentProc(o: { certDir: string; balancerPort: number; cluster: string; agentId: string; apiserverUrl: string; apiserverCAFile: string }): Proc {
  return new Proc([
    'agent',
    '--server', `wss://localhost:${o.balancerPort}`,
    '--cluster', o.cluster,
    '--agent-id', o.agentId,
    '--cert', path.join(o.certDir, `agent-${o.cluster}.crt`),
    '--key', path.join(o.certDir, `agent-${o.cluster}.key`),
    '--ca', path.join(o.certDir, 'ca.crt'),
    '--apiserver', o.apiserverUrl,
    '--apiserver-ca', o.apiserverCAFile,
    '--health-port', '0',
    '--health-bind-address', '127.0.0.1',
    '--grace-period', '3s',
  ]);
}

/** Waits until every admin endpoint lists exactly the expected agent ids for each cluster. */
export async function waitForMesh(adminUrls: string[], expected: Map<string, string[]>, withinMs = 60_000): Promise<void> {
  const deadline = Date.now() + withinMs;
  const want = (ids: string[]) => [...ids].sort().join(',');
  for (;;) {
    const views = await Promise.all(adminUrls.map((u) => clustersJson(u).catch(() => undefined)));
    const missing = views.flatMap((v, i) =>
      [...expected]
        .filter(([c, ids]) => want(v?.clusters.find((x) => x.name === c)?.agents.map((a) => a.id) ?? []) !== want(ids))
        .map(([c]) => `${adminUrls[i]}: ${c}`),
    );
    if (missing.length === 0) return;
    if (Date.now() > deadline) throw new Error(`agents not on every server: ${missing.join(', ')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
