/**
 * The reference L7 proxy of the L7 scenarios, written in C: two nginx
 * instances in series standing in for hub and agent (Debian's nginx, run
 * as the current user from a temporary prefix). TLS on both hops and to the
 * upstream, keep-alive upstream connections, no response buffering (a proxy
 * in front of an apiserver must stream watches), one worker process each
 * (`master_process off`: the process started is the one that works, as a
 * kubetunnel server or agent is one process), like the kubetunnel path:
 *
 *   client --TLS--> nginx "hub" --TLS--> nginx "agent" --TLS--> upstream
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Pki } from './parties.js';
import { freePort, start } from './procs.js';

export const NGINX = process.env.BENCH_NGINX ?? '/usr/sbin/nginx';

export interface NginxChain {
  hub: ChildProcess;
  agent: ChildProcess;
  /** The hub's TLS port: the client's entry. */
  port: number;
  version: string;
}

function config(dir: string, pki: Pki, listen: number, upstream: number): string {
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((k) => `  ${k}_temp_path ${path.join(dir, k)};`).join('\n');
  return `daemon off;
master_process off;
worker_processes 1;
pid ${path.join(dir, 'nginx.pid')};
error_log stderr warn;
events { worker_connections 8192; }
http {
  access_log off;
${temp}
  upstream next { server 127.0.0.1:${upstream}; keepalive 64; }
  server {
    listen 127.0.0.1:${listen} ssl;
    ssl_certificate ${pki.file('server.crt')};
    ssl_certificate_key ${pki.file('server.key')};
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    location / {
      proxy_pass https://next;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host localhost;
      proxy_buffering off;
      proxy_ssl_session_reuse on;
      proxy_ssl_server_name on;
      proxy_ssl_name localhost;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate ${pki.file('ca.crt')};
    }
  }
}
`;
}

/** Resolves once `port` accepts connections (nginx prints nothing when ready). */
async function listening(port: number, proc: ChildProcess, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`${what}: nginx exited (${proc.exitCode})`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${what}: nginx not listening on ${port} within 10 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function startOne(dir: string, pki: Pki, listen: number, upstream: number): ChildProcess {
  fs.mkdirSync(dir, { recursive: true });
  const conf = path.join(dir, 'nginx.conf');
  fs.writeFileSync(conf, config(dir, pki, listen, upstream));
  return start(NGINX, ['-p', dir, '-c', conf, '-e', 'stderr'], { node: false });
}

/** Whether nginx can run here (the L7 scenarios leave the chain out if not). */
export function nginxAvailable(): boolean {
  try {
    fs.accessSync(NGINX, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export async function startNginxChain(pki: Pki, tmp: string, upstreamPort: number): Promise<NginxChain> {
  const [agentPort, hubPort] = [await freePort(), await freePort()];
  const agent = startOne(path.join(tmp, 'nginx-agent'), pki, agentPort, upstreamPort);
  await listening(agentPort, agent, 'nginx agent');
  const hub = startOne(path.join(tmp, 'nginx-hub'), pki, hubPort, agentPort);
  await listening(hubPort, hub, 'nginx hub');
  // nginx -v prints its version on standard error.
  const v = spawnSync(NGINX, ['-v'], { encoding: 'utf8' });
  return { hub, agent, port: hubPort, version: `${v.stderr}${v.stdout}`.trim() };
}
