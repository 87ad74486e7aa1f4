import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Defaults } from '../constants.js';
import { isValidClusterName } from '../names.js';
import { createCA, issueAgentCert, issueClientCert, issueServerCert, type Pem } from './issue.js';

/**
 * Names every hub certificate carries besides localhost and 127.0.0.1:
 * kubectl's CONNECT-mode kubeconfig sets tls-server-name
 * kubernetes.default.svc (the name every member apiserver certificate has),
 * and kubectl checks the hub's proxy certificate against that same name.
 */
const KUBERNETES_NAMES = ['kubernetes.default.svc', 'kubernetes.default', 'kubernetes'];
/** L7 contexts name their cluster in the server name: <cluster>.clusters.kubetunnel. */
const L7_NAMES = [`*.${Defaults.l7ServerNameSuffix}`];

/**
 * Writes through a new file renamed into place: a key never sits under a
 * looser mode, and a server watching the files never reads half of one.
 */
function writeFile(file: string, data: string, mode: number): void {
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    fs.writeFileSync(tmp, data, { mode, flag: 'wx' });
    fs.chmodSync(tmp, mode); // the umask may have taken bits off
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}

function writePem(dir: string, base: string, pem: Pem): string[] {
  const crt = path.join(dir, `${base}.crt`);
  const key = path.join(dir, `${base}.key`);
  writeFile(key, pem.key, 0o600);
  writeFile(crt, pem.cert, 0o644);
  return [crt, key];
}

/** The CA in `dir` (ca.crt, ca.key). */
export function loadCA(dir: string): Pem {
  const cert = path.join(dir, 'ca.crt');
  const key = path.join(dir, 'ca.key');
  if (!fs.existsSync(cert) || !fs.existsSync(key)) throw new Error(`no CA in ${dir}: run \`kubetunnel certs init --dir ${dir}\` first`);
  return { cert: fs.readFileSync(cert, 'utf8'), key: fs.readFileSync(key, 'utf8') };
}

/** `kubetunnel certs init`: a CA (the one in `dir` is kept if there is one) and a new server certificate. */
export function certsInit(dir: string, opts: { sans?: string[] }): { files: string[] } {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const hasCert = fs.existsSync(path.join(dir, 'ca.crt'));
  const hasKey = fs.existsSync(path.join(dir, 'ca.key'));
  if (hasCert !== hasKey)
    throw new Error(`${dir} has ${hasCert ? 'ca.crt but no ca.key' : 'ca.key but no ca.crt'}: restore it, or remove both to make a new CA`);
  const files: string[] = [];
  let ca: Pem;
  if (hasCert) ca = loadCA(dir);
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
  if (!isValidClusterName(opts.cluster))
    throw new Error(`invalid cluster name ${JSON.stringify(opts.cluster)}: want a DNS label (a-z, 0-9, '-'; at most 63; alphanumeric at both ends)`);
  const ca = loadCA(dir);
  return { files: writePem(dir, `agent-${opts.cluster}`, issueAgentCert(ca, { cluster: opts.cluster })) };
}

/** `kubetunnel certs client`: a client certificate for `user` in `groups`. */
export function certsClient(dir: string, opts: { user: string; groups?: string[] }): { files: string[] } {
  if (!/^[A-Za-z0-9._:@-]+$/.test(opts.user) || opts.user.includes('..'))
    throw new Error(`user name ${JSON.stringify(opts.user)} cannot be a file name: use letters, digits and . _ : @ - (no '..')`);
  const ca = loadCA(dir);
  return { files: writePem(dir, `client-${opts.user}`, issueClientCert(ca, { user: opts.user, groups: opts.groups ?? [] })) };
}
