/**
 * Member apiservers not written in Node, for the end-to-end suites: Python's
 * http.server (kube_like.py) over TLS, and nginx from Debian's packages as an
 * HTTPS upstream (static JSON, header echo, and a proxy to a plain-HTTP
 * kube_like.py for the streaming, echo and upgrade endpoints).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';

/** The system Python (the first python3 on PATH may be another build). */
export const PYTHON = '/usr/bin/python3';
export const NGINX = '/usr/sbin/nginx';
const SCRIPT = fileURLToPath(new URL('./kube_like.py', import.meta.url));

export interface RecordedRequest {
  method: string;
  path: string;
  /** Header names as sent, values as the exact bytes received. */
  headers: Array<[string, Buffer]>;
}

export interface Upstream {
  port: number;
  url: string;
  /** Requests the member saw so far (read from kube_like.py's record file). */
  requests(): RecordedRequest[];
  stop(): Promise<void>;
}

/** Values of header `name` (any case) of a recorded request, as UTF-8 text. */
export function headerValues(r: RecordedRequest, name: string): string[] {
  return r.headers.filter(([k]) => k.toLowerCase() === name.toLowerCase()).map(([, v]) => v.toString('utf8'));
}

/** The bytes /large?size=N answers (kube_like.py's `pattern`). */
export function largePattern(size: number): Buffer {
  const out = Buffer.alloc(size);
  for (let i = 0; i < size; i++) out[i] = (i % 65536) % 251;
  return out;
}

async function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill(signal);
  await exited;
}

function readRecord(file: string): RecordedRequest[] {
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const r = JSON.parse(line) as { method: string; path: string; headers: Array<[string, string]> };
      return { method: r.method, path: r.path, headers: r.headers.map(([k, hex]) => [k, Buffer.from(hex, 'hex')] as [string, Buffer]) };
    });
}

/** Starts kube_like.py (TLS with `cert`/`key`, or plain HTTP) on a free port of 127.0.0.1. */
export async function startPython(o: { dir: string; name: string; cert?: string; key?: string }): Promise<Upstream> {
  if (!fs.existsSync(PYTHON)) throw new Error(`${PYTHON} is missing: the peers suite needs Debian's python3`);
  const record = path.join(o.dir, `${o.name}-requests.jsonl`);
  const args = [SCRIPT, '--record', record];
  if (o.cert && o.key) {
    const certFile = path.join(o.dir, `${o.name}.crt`);
    const keyFile = path.join(o.dir, `${o.name}.key`);
    fs.writeFileSync(certFile, o.cert);
    fs.writeFileSync(keyFile, o.key, { mode: 0o600 });
    args.push('--cert', certFile, '--key', keyFile);
  } else args.push('--plain');
  const child = spawn(PYTHON, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const m = /listening (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`kube_like.py exited ${code}: ${stderr.slice(-2000)}`)));
  });
  const scheme = o.cert ? 'https' : 'http';
  return { port, url: `${scheme}://127.0.0.1:${port}`, requests: () => readRecord(record), stop: () => stopChild(child) };
}

/** A port of 127.0.0.1 free right now (nginx cannot listen on port 0 and report it). */
async function freePort(): Promise<number> {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address() as net.AddressInfo;
  srv.close();
  await once(srv, 'close');
  return port;
}

/** Resolves once a TLS handshake with 127.0.0.1:port succeeds; rejects if `child` exits first. */
async function tlsReady(port: number, ca: string, child: ChildProcess, errorLog: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`nginx exited ${child.exitCode}: ${fs.existsSync(errorLog) ? fs.readFileSync(errorLog, 'utf8').slice(-2000) : ''}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nginx not accepting TLS on ${port} within 10 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const NGINX_VERSION_JSON = { major: '1', minor: '32', gitVersion: 'v1.32.0-nginx', platform: 'nginx' };
export const NGINX_NAMESPACES = {
  kind: 'NamespaceList',
  apiVersion: 'v1',
  metadata: { resourceVersion: '1' },
  items: ['default', 'kube-system', 'nginx-apps'].map((name) => ({ metadata: { name, uid: `uid-${name}`, resourceVersion: '1' }, status: { phase: 'Active' } })),
};
const DISCOVERY: Record<string, object> = {
  api: { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: '127.0.0.1:443' }] },
  apis: { kind: 'APIGroupList', apiVersion: 'v1', groups: [] },
  'api/v1': {
    kind: 'APIResourceList',
    groupVersion: 'v1',
    resources: [{ name: 'namespaces', singularName: 'namespace', namespaced: false, kind: 'Namespace', verbs: ['get', 'list', 'watch'], shortNames: ['ns'] }],
  },
};
/** Size of nginx's static /large.bin (largePattern bytes): more than a stream's window. */
export const NGINX_LARGE = 1024 * 1024 + 17;

/**
 * Runs nginx in the foreground (daemon off, its own prefix, pid and error log
 * in a fresh directory) as an HTTPS server on 127.0.0.1: /version and
 * /api/v1/namespaces are static files, /large.bin a static 1 MiB file,
 * /whoami echoes the impersonation headers it got (the first of each name, as
 * nginx 1.22 does) and the Authorization header, /protocol the protocol the
 * request came over (HTTP/2 and HTTP/1.1 are offered); everything else,
 * watches and upgrades included, is proxied to a plain-HTTP kube_like.py.
 */
export async function startNginx(o: { dir: string; cert: string; key: string; ca: string }): Promise<Upstream & { backend: Upstream }> {
  if (!fs.existsSync(NGINX)) throw new Error(`${NGINX} is missing: the peers suite needs Debian's nginx (apt-get install nginx-light)`);
  const prefix = fs.mkdtempSync(path.join(o.dir, 'nginx-'));
  // Workers run as an unprivileged user when nginx starts as root: they read
  // the files here (the test's directory: traversal only, no listing).
  fs.chmodSync(o.dir, 0o711);
  fs.chmodSync(prefix, 0o755);
  const www = path.join(prefix, 'www');
  fs.mkdirSync(path.join(www, 'api/v1'), { recursive: true, mode: 0o755 });
  fs.writeFileSync(path.join(www, 'version'), JSON.stringify(NGINX_VERSION_JSON), { mode: 0o644 });
  fs.writeFileSync(path.join(www, 'api/v1/namespaces'), JSON.stringify(NGINX_NAMESPACES), { mode: 0o644 });
  // Legacy discovery for `kubectl get namespaces`: what kube_like.py answers.
  const discovery = (p: string) => path.join(www, `discovery-${p.replace('/', '-')}.json`);
  for (const [p, doc] of Object.entries(DISCOVERY)) fs.writeFileSync(discovery(p), JSON.stringify(doc), { mode: 0o644 });
  fs.writeFileSync(path.join(www, 'large.bin'), largePattern(NGINX_LARGE), { mode: 0o644 });
  for (const t of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) fs.mkdirSync(path.join(prefix, t), { mode: 0o777 });
  for (const t of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) fs.chmodSync(path.join(prefix, t), 0o777);
  fs.writeFileSync(path.join(prefix, 'server.crt'), o.cert);
  fs.writeFileSync(path.join(prefix, 'server.key'), o.key, { mode: 0o600 });
  const backend = await startPython({ dir: o.dir, name: 'nginx-backend' });
  const errorLog = path.join(prefix, 'error.log');
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const conf = `
daemon off;
worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${errorLog} warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${prefix}/body;
  proxy_temp_path ${prefix}/proxy;
  fastcgi_temp_path ${prefix}/fastcgi;
  uwsgi_temp_path ${prefix}/uwsgi;
  scgi_temp_path ${prefix}/scgi;
  # A Go kube-apiserver reads up to 1 MiB of request headers and any number of
  # lines (long Impersonate-Group lists); nginx's defaults are 32 KiB and 1,000.
  large_client_header_buffers 16 64k;
  max_headers 20000;
  client_max_body_size 16m;
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  server {
    # HTTP/2 and HTTP/1.1 by ALPN, as a kube-apiserver: the agent's requests come over HTTP/2, upgrades over HTTP/1.1.
    listen 127.0.0.1:${port} ssl http2;
    ssl_certificate ${prefix}/server.crt;
    ssl_certificate_key ${prefix}/server.key;
    root ${www};
    default_type application/json;
    location = /version { }
    location = /api { alias ${discovery('api')}; }
    location = /apis { alias ${discovery('apis')}; }
    location = /api/v1 { alias ${discovery('api/v1')}; }
    location = /api/v1/namespaces {
      if ($arg_watch) { proxy_pass http://127.0.0.1:${backend.port}; }
      proxy_http_version 1.1;
      proxy_buffering off;
    }
    location = /large.bin { default_type application/octet-stream; }
    location = /protocol { default_type text/plain; return 200 $server_protocol; }
    location = /whoami {
      return 200 '{"user":"$http_impersonate_user","group":"$http_impersonate_group","authorization":"$http_authorization"}';
    }
    location / {
      proxy_pass http://127.0.0.1:${backend.port};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
`;
    fs.writeFileSync(path.join(prefix, 'nginx.conf'), conf);
    const child = spawn(NGINX, ['-p', prefix, '-e', errorLog, '-c', path.join(prefix, 'nginx.conf')], { stdio: 'ignore' });
    try {
      await tlsReady(port, o.ca, child, errorLog);
    } catch (err) {
      await stopChild(child);
      // Someone took the port between the probe and nginx's bind: another one.
      if (attempt < 3 && /Address already in use/.test(fs.readFileSync(errorLog, 'utf8'))) continue;
      await backend.stop();
      throw err;
    }
    return {
      port,
      url: `https://127.0.0.1:${port}`,
      backend,
      requests: backend.requests,
      // SIGTERM: nginx's fast shutdown; the master exits after its worker.
      stop: async () => {
        await stopChild(child);
        await backend.stop();
      },
    };
  }
}
