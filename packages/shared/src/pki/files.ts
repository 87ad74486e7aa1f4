import fs from 'node:fs';
import path from 'node:path';
import { Defaults } from '../constants.js';
import { createCA, issueAgentCert, issueClientCert, issueServerCert, type Pem } from './issue.js';

/**
 * Names every hub certificate carries besides the defaults: kubectl in
 * CONNECT mode checks the hub with the cluster's tls-server-name, and
 * kubernetes.default.svc is the name every apiserver certificate has.
 */
const KUBERNETES_NAMES = ['kubernetes.default.svc', 'kubernetes.default', 'kubernetes'];
/** L7 contexts name their cluster in the server name: <cluster>.clusters.kubetunnel. */
const L7_NAMES = [`*.${Defaults.l7ServerNameSuffix}`];

function writePem(dir: string, base: string, pem: Pem): string[] {
  const crt = path.join(dir, `${base}.crt`);
  const key = path.join(dir, `${base}.key`);
  fs.writeFileSync(key, pem.key, { mode: 0o600 });
  fs.chmodSync(key, 0o600);
  fs.writeFileSync(crt, pem.cert, { mode: 0o644 });
  return [crt, key];
}

/** The CA in `dir`. */
export function loadCA(dir: string): Pem {
  const cert = path.join(dir, 'ca.crt');
  const key = path.join(dir, 'ca.key');
  if (!fs.existsSync(cert) || !fs.existsSync(key)) throw new Error(`no CA in ${dir}: run \`kubetunnel certs init --dir ${dir}\` first`);
  return { cert: fs.readFileSync(cert, 'utf8'), key: fs.readFileSync(key, 'utf8') };
}

/** `kubetunnel certs init`: a CA (kept if `dir` has one) and a server certificate. */
export function certsInit(dir: string, opts: { sans?: string[] }): { files: string[] } {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const files: string[] = [];
  let ca: Pem;
  if (fs.existsSync(path.join(dir, 'ca.crt')) && fs.existsSync(path.join(dir, 'ca.key'))) ca = loadCA(dir);
  else {
    ca = createCA();
    files.push(...writePem(dir, 'ca', ca));
  }
  const sans = ['localhost', '127.0.0.1', ...KUBERNETES_NAMES, ...L7_NAMES, ...(opts.sans ?? [])];
  files.push(...writePem(dir, 'server', issueServerCert(ca, { sans, commonName: 'kubetunnel-server' })));
  return { files };
}

/** `kubetunnel certs agent`: an agent certificate bound to `cluster`. */
export function certsAgent(dir: string, opts: { cluster: string }): { files: string[] } {
  const ca = loadCA(dir);
  return { files: writePem(dir, `agent-${opts.cluster}`, issueAgentCert(ca, { cluster: opts.cluster })) };
}

/** `kubetunnel certs client`: a client certificate for `user` in `groups`. */
export function certsClient(dir: string, opts: { user: string; groups?: string[] }): { files: string[] } {
  if (!/^[A-Za-z0-9._:@-]+$/.test(opts.user) || opts.user.includes('..'))
    throw new Error(`user name ${JSON.stringify(opts.user)} cannot be a file name: use letters, digits and . _ : @ -`);
  const ca = loadCA(dir);
  return { files: writePem(dir, `client-${opts.user}`, issueClientCert(ca, { user: opts.user, groups: opts.groups ?? [] })) };
}
