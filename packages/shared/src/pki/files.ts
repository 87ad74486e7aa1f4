import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Defaults } from '../constants.js';
import { isValidClusterName } from '../names.js';
import { createCA, issueAgentCert, issueClientCert, issueServerCert, namePermitted, permittedNamesOf, type Pem } from './issue.js';

/** L7 contexts name their cluster in the server name: <cluster>.clusters.kubetunnel. */
const L7_NAMES = [`*.${Defaults.l7ServerNameSuffix}`];
/** Names every hub certificate carries: the loopback names, and the L7 server names. */
const HUB_NAMES = ['localhost', '127.0.0.1', ...L7_NAMES];

/**
 * Writes through a new file renamed into place: a key never sits under a
 * looser mode (whatever mode a file already there had), and a server
 * watching the files never reads half of one.
 */
export function replaceFile(file: string, data: string, mode: number): void {
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
  replaceFile(key, pem.key, 0o600);
  replaceFile(crt, pem.cert, 0o644);
  return [crt, key];
}

function readPem(dir: string, base: string): Pem | undefined {
  const cert = path.join(dir, `${base}.crt`);
  const key = path.join(dir, `${base}.key`);
  const hasCert = fs.existsSync(cert);
  const hasKey = fs.existsSync(key);
  if (hasCert !== hasKey)
    throw new Error(`${dir} has ${hasCert ? `${base}.crt but no ${base}.key` : `${base}.key but no ${base}.crt`}: restore it, or remove both to make a new CA`);
  return hasCert ? { cert: fs.readFileSync(cert, 'utf8'), key: fs.readFileSync(key, 'utf8') } : undefined;
}

/** The hub CA in `dir` (ca.crt, ca.key): it signs the server certificate. */
export function loadCA(dir: string): Pem {
  const ca = readPem(dir, 'ca');
  if (!ca) throw new Error(`no CA in ${dir}: run \`kubetunnel certs init --dir ${dir}\` first`);
  return ca;
}

/**
 * Why a hub certificate may not carry `name`, or undefined when it may.
 * kubectl checks the hub's certificate and the member apiserver's against one
 * CA bundle (the hub CA with the member CA): a Kubernetes service name on a
 * hub certificate would let the hub pass for every member apiserver.
 */
export function serviceNameProblem(name: string): string | undefined {
  const n = name.toLowerCase().replace(/\.$/, '');
  const exact = ['kubernetes', 'kubernetes.default', 'kubernetes.default.svc'];
  const labels = n.split('.');
  const wildcard = labels[0] === '*';
  const isService =
    exact.includes(n) ||
    n.startsWith('kubernetes.default.svc.') ||
    labels.slice(1).includes('svc') ||
    (wildcard && exact.includes(['kubernetes', ...labels.slice(1)].join('.')));
  if (!isService) return undefined;
  return (
    `${JSON.stringify(name)} is a Kubernetes service name (kubernetes, kubernetes.default, *.svc, *.svc.<domain>) ` +
    'and may not be on the hub certificate: kubectl trusts the hub CA for the member apiserver connection too, ' +
    'so a hub certificate with that name would pass for every member apiserver'
  );
}

export interface CertsResult {
  files: string[];
  /** Things the caller should show the user (the command prints them to stderr). */
  warnings: string[];
}

const ONE_CA_WARNING =
  'one CA signs the server, agent and client certificates here (older layout): the CA that kubeconfigs and agents trust ' +
  'for the hub can then also sign certificates that pass for the hub\'s clients. Run `kubetunnel certs init` in a new ' +
  'directory for a hub CA and a separate client CA';

/**
 * The CA that signs agent and client certificates: D/client-ca.*, or in the
 * older one-CA layout D/ca.* (with a warning).
 */
export function loadClientCA(dir: string): { ca: Pem; warnings: string[] } {
  const client = readPem(dir, 'client-ca');
  if (client) return { ca: client, warnings: [] };
  const ca = readPem(dir, 'ca');
  if (!ca) throw new Error(`no CA in ${dir}: run \`kubetunnel certs init --dir ${dir}\` first`);
  return { ca, warnings: [ONE_CA_WARNING] };
}

/**
 * `kubetunnel certs init`: a hub CA and a client CA (those already in `dir`
 * are kept) and a new server certificate signed by the hub CA.
 *
 * The hub CA is made with name constraints: it can sign only the names of
 * this server certificate, so even its key cannot make a certificate that
 * kubectl would take for a member apiserver.
 */
export function certsInit(dir: string, opts: { sans?: string[] }): CertsResult {
  const sans = [...new Set([...HUB_NAMES, ...(opts.sans ?? [])])];
  for (const san of sans) {
    const problem = serviceNameProblem(san);
    if (problem) throw new Error(problem);
  }
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const files: string[] = [];
  const warnings: string[] = [];
  const existingHub = readPem(dir, 'ca');
  const existingClient = readPem(dir, 'client-ca');
  let hub: Pem;
  if (existingHub) {
    hub = existingHub;
    const permitted = permittedNamesOf(hub.cert);
    if (permitted === undefined)
      warnings.push(`${path.join(dir, 'ca.crt')} places no limit on the names it signs (made by an older version): it could sign a certificate for a member apiserver's name`);
    else {
      const outside = sans.filter((n) => !namePermitted(n, permitted));
      if (outside.length > 0)
        throw new Error(
          `the hub CA in ${dir} may sign only ${permitted.join(', ')}, not ${outside.join(', ')}: ` +
            `give the names it was made for, or remove ${dir}/ca.crt and ${dir}/ca.key to make a new hub CA (agents and kubeconfigs must then trust the new ca.crt)`,
        );
    }
  } else {
    hub = createCA({ commonName: 'kubetunnel hub CA', permittedNames: sans });
    files.push(...writePem(dir, 'ca', hub));
  }
  if (!existingClient) {
    if (existingHub) warnings.push(ONE_CA_WARNING); // agents and clients of the older layout keep working
    else files.push(...writePem(dir, 'client-ca', createCA({ commonName: 'kubetunnel client CA' })));
  }
  // server.crt is the chain (the server certificate, then the hub CA): the server
  // sends both, so an agent joining with --ca-cert-hash finds the hub CA in the handshake.
  const server = issueServerCert(hub, { sans, commonName: 'kubetunnel-server' });
  files.push(...writePem(dir, 'server', { key: server.key, cert: server.cert + hub.cert }));
  return { files, warnings };
}

/** `kubetunnel certs agent`: an agent certificate bound to `cluster`, from the client CA. */
export function certsAgent(dir: string, opts: { cluster: string }): CertsResult {
  if (!isValidClusterName(opts.cluster))
    throw new Error(`invalid cluster name ${JSON.stringify(opts.cluster)}: want a DNS label (a-z, 0-9, '-'; at most 63; alphanumeric at both ends)`);
  const { ca, warnings } = loadClientCA(dir);
  return { files: writePem(dir, `agent-${opts.cluster}`, issueAgentCert(ca, { cluster: opts.cluster })), warnings };
}

/** `kubetunnel certs client`: a client certificate for `user` in `groups`, from the client CA. */
export function certsClient(dir: string, opts: { user: string; groups?: string[] }): CertsResult {
  if (!/^[A-Za-z0-9._:@-]+$/.test(opts.user) || opts.user.includes('..'))
    throw new Error(`user name ${JSON.stringify(opts.user)} cannot be a file name: use letters, digits and . _ : @ - (no '..')`);
  const { ca, warnings } = loadClientCA(dir);
  return { files: writePem(dir, `client-${opts.user}`, issueClientCert(ca, { user: opts.user, groups: opts.groups ?? [] })), warnings };
}

/** The names every apiserver certificate carries (the in-cluster service names). */
export const APISERVER_NAMES = ['kubernetes.default.svc', 'kubernetes.default', 'kubernetes'];

/**
 * `kubetunnel certs apiserver`: a member apiserver's own CA and serving
 * certificate, for the stand-in apiserver of the demo and docker-compose (a
 * real cluster has its own). D/apiserver-ca.crt, D/apiserver-ca.key,
 * D/apiserver.crt, D/apiserver.key; names: the in-cluster service names and
 * `sans`. The CA is kept if there is one.
 */
export function certsApiserver(dir: string, opts: { sans?: string[]; commonName?: string }): CertsResult {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const files: string[] = [];
  let ca = readPem(dir, 'apiserver-ca');
  if (!ca) {
    ca = createCA({ commonName: opts.commonName ?? 'member apiserver CA' });
    files.push(...writePem(dir, 'apiserver-ca', ca));
  }
  const sans = [...new Set([...APISERVER_NAMES, ...(opts.sans ?? [])])];
  files.push(...writePem(dir, 'apiserver', issueServerCert(ca, { sans, commonName: 'kube-apiserver' })));
  return { files, warnings: [] };
}
