import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import { Document } from 'yaml';
import { Defaults, namePermitted, permittedNamesOf } from '@kubetunnel/shared';
import { SettingError } from '../options.js';

/** How the user authenticates to the member apiservers in CONNECT mode; never derived from the hub credential. */
export type MemberCredential =
  | { token: string }
  | { clientCert: string; clientKey: string }
  | { exec: { command: string; args: string[] } };

export interface KubeconfigInput {
  /** https://HOST:PORT of the hub's frontend. */
  server: string;
  /** PEM of the hub CA. */
  hubCA: string;
  modes: Array<'connect' | 'l7'>;
  /**
   * Member clusters. CONNECT mode: `memberCA` is what kubectl trusts for the
   * member apiserver; `memberServer` is the apiserver URL (a name on its
   * certificate), default https://kubernetes.default.svc.
   */
  clusters: Array<{ name: string; memberCA?: string; memberServer?: string }>;
  /** The hub credential: a client certificate, or a token from the hub's token file. */
  credentials: { clientCert: string; clientKey: string } | { token: string };
  /** CONNECT mode: the member credential. Absent: none besides a hub client certificate, which kubectl shows the member too. */
  member?: MemberCredential;
  /** L7 mode: contexts use the server name <cluster>.<suffix>. */
  l7ServerNameSuffix: string;
}

/** The apiserver URL of CONNECT contexts: a name every apiserver certificate carries, and no hub certificate may. */
export const DEFAULT_MEMBER_SERVER = 'https://kubernetes.default.svc';

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

/** The comment a CONNECT-mode kubeconfig carries when the user has no member credential. */
export const NO_MEMBER_CREDENTIAL =
  ' kubetunnel: the CONNECT contexts carry no member credential: the member apiservers see no token or certificate\n' +
  ' from this user (kubectl asks for one, or takes --token). The hub token is never sent to a member. Give one with\n' +
  ' `kubetunnel kubeconfig --member-token T`, --member-client-cert/--member-client-key, or --member-exec.';

/**
 * A kubeconfig with one context per cluster.
 *
 * CONNECT mode (the hub relays bytes it cannot read). kubectl applies the
 * cluster's TLS settings to an https proxy too: one CA bundle and one
 * optional `tls-server-name` for both connections. So:
 *  - no `tls-server-name`: kubectl checks the hub against the proxy URL's host
 *    and the member against `server`'s host;
 *  - `server: https://kubernetes.default.svc` (a name on every apiserver
 *    certificate, and one `certs init` refuses to put on the hub's; its CA
 *    is name-constrained to the hub's own names), or the member's own URL;
 *  - the CA bundle is the hub CA plus the member CA;
 *  - the cluster rides in the proxy URL as the Basic user name, the hub
 *    token (if any) as its password: `https://member-1:TOKEN@hub:8090`;
 *    kubectl sends it as `Proxy-Authorization: Basic`, to the hub only;
 *  - the user entry holds only the member credential (or the hub client
 *    certificate, which kubectl presents on both connections: possession is
 *    proven, nothing is handed over).
 *
 * L7 mode: `server: https://hub/clusters/<name>`, the hub CA, the hub
 * credentials, and `tls-server-name: <name>.clusters.kubetunnel` (kubectl
 * get --raw drops the path prefix; the server name still says which cluster,
 * and the hub certificate from `certs init` carries *.clusters.kubetunnel);
 * the hub decides who the caller is and the agent impersonates them.
 */
export function buildKubeconfig(input: KubeconfigInput): string {
  const hub = new URL(input.server);
  const creds = input.credentials;
  const hubToken = 'token' in creds ? creds.token : undefined;
  const hubCertData =
    'clientCert' in creds ? { 'client-certificate-data': b64(creds.clientCert), 'client-key-data': b64(creds.clientKey) } : undefined;
  if (hubCertData && input.member && 'clientCert' in input.member)
    throw new Error('kubectl presents one client certificate to the hub and the member alike: a member client certificate needs a hub token (--token), not --client-cert');
  const clusters = [];
  const contexts = [];
  const users = [];
  let noMemberCredential = false;
  for (const mode of input.modes) {
    const suffix = mode === 'l7' ? '-l7' : '';
    const userName = `kubetunnel-${mode}`;
    for (const c of input.clusters) {
      let cluster: Record<string, string>;
      if (mode === 'l7') {
        cluster = {
          server: `${hub.origin}/clusters/${c.name}`,
          'certificate-authority-data': b64(input.hubCA),
          // kubectl get --raw drops the path prefix; the server name still names the cluster.
          'tls-server-name': `${c.name}.${input.l7ServerNameSuffix}`,
        };
      } else {
        const proxy = new URL(hub.origin);
        proxy.username = c.name;
        if (hubToken !== undefined) proxy.password = hubToken;
        cluster = {
          server: c.memberServer ?? DEFAULT_MEMBER_SERVER,
          'proxy-url': proxy.toString().replace(/\/$/, ''),
          'certificate-authority-data': b64(input.hubCA.trimEnd() + '\n' + (c.memberCA ?? '')),
        };
      }
      clusters.push({ name: c.name + suffix, cluster });
      contexts.push({ name: c.name + suffix, context: { cluster: c.name + suffix, user: userName } });
    }
    let user: Record<string, unknown>;
    if (mode === 'l7') user = hubCertData ?? { token: hubToken! };
    else {
      const m = input.member;
      user = { ...hubCertData };
      if (m && 'token' in m) user.token = m.token;
      else if (m && 'clientCert' in m) Object.assign(user, { 'client-certificate-data': b64(m.clientCert), 'client-key-data': b64(m.clientKey) });
      else if (m && 'exec' in m)
        user.exec = { apiVersion: 'client.authentication.k8s.io/v1', command: m.exec.command, args: m.exec.args, interactiveMode: 'IfAvailable' };
      if (Object.keys(user).length === 0) noMemberCredential = true;
    }
    users.push({ name: userName, user });
  }
  const doc = new Document({
    apiVersion: 'v1',
    kind: 'Config',
    preferences: {},
    clusters,
    users,
    contexts,
    'current-context': contexts[0]?.name ?? '',
  });
  if (noMemberCredential) doc.commentBefore = NO_MEMBER_CREDENTIAL;
  return doc.toString();
}

/** `SHA256 AB:CD:...` of each certificate in a PEM bundle (empty for none). */
export function fingerprints(pem: string): string[] {
  const out: string[] = [];
  for (const m of pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)) {
    try {
      out.push(`SHA256 ${new X509Certificate(m[0]).fingerprint256}`);
    } catch {
      out.push('(not a certificate)');
    }
  }
  return out;
}

/** `NAME=VALUE` pairs of a repeatable flag, keyed by name; the error names the flag. */
export function namedValues(flag: string, values: string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const v of values) {
    const eq = v.indexOf('=');
    if (eq <= 0 || eq === v.length - 1) throw new Error(`--${flag} ${JSON.stringify(v)}: want NAME=VALUE`);
    const name = v.slice(0, eq);
    if (out.has(name)) throw new Error(`--${flag}: ${name} given twice`);
    out.set(name, v.slice(eq + 1));
  }
  return out;
}

/** The flags of `kubetunnel kubeconfig`, as commander gives them. */
export interface KubeconfigFlags {
  server: string;
  ca: string;
  clientCert?: string;
  clientKey?: string;
  token?: string;
  memberToken?: string;
  memberClientCert?: string;
  memberClientKey?: string;
  memberExec?: string;
  memberCa: string[];
  memberServer: string[];
  clusters: string;
  mode: 'connect' | 'l7';
  admin: string;
  out?: string;
}

export interface AdminClient {
  fetchClusters(admin: string): Promise<{ clusters: Array<{ name: string }> }>;
  fetchClusterCA(admin: string, cluster: string): Promise<string | undefined>;
}

function readFlagFile(flag: string, file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new SettingError(flag, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}

/**
 * `kubetunnel kubeconfig`: checks the flags, gathers the cluster list and
 * member CAs (pinned with --member-ca, else as each agent reported it),
 * and says on `notes` what the user should know: each member CA's
 * fingerprint and where it came from, a missing member credential, a hub CA
 * without name constraints.
 */
export async function prepareKubeconfig(
  o: KubeconfigFlags,
  admin: AdminClient,
): Promise<{ text: string; notes: string[]; contexts: string[] }> {
  const notes: string[] = [];
  const hubCA = readFlagFile('ca', o.ca);
  let hubURL: URL;
  try {
    hubURL = new URL(o.server);
  } catch {
    throw new SettingError('server', `want https://HOST:PORT, got ${JSON.stringify(o.server)}`);
  }
  if (hubURL.protocol !== 'https:') throw new SettingError('server', `want https://HOST:PORT, got ${JSON.stringify(o.server)}`);
  let credentials: KubeconfigInput['credentials'];
  if (o.clientCert || o.clientKey) {
    if (!o.clientCert || !o.clientKey) throw new SettingError('client-cert', 'give both --client-cert and --client-key');
    if (o.token) throw new SettingError('token', 'give --token or --client-cert and --client-key, not both');
    credentials = { clientCert: readFlagFile('client-cert', o.clientCert), clientKey: readFlagFile('client-key', o.clientKey) };
  } else if (o.token) credentials = { token: o.token };
  else throw new SettingError('token', 'give --token or --client-cert and --client-key');

  const memberFlags = [o.memberToken && 'member-token', (o.memberClientCert || o.memberClientKey) && 'member-client-cert', o.memberExec && 'member-exec'].filter(
    Boolean,
  ) as string[];
  if (memberFlags.length > 1) throw new SettingError(memberFlags[1]!, `give one member credential, not --${memberFlags.join(' and --')}`);
  let member: MemberCredential | undefined;
  if (o.memberToken) member = { token: o.memberToken };
  else if (o.memberClientCert || o.memberClientKey) {
    if (!o.memberClientCert || !o.memberClientKey) throw new SettingError('member-client-cert', 'give both --member-client-cert and --member-client-key');
    if ('clientCert' in credentials)
      throw new SettingError('member-client-cert', 'kubectl presents one client certificate to the hub and the member alike: use --token for the hub');
    member = { clientCert: readFlagFile('member-client-cert', o.memberClientCert), clientKey: readFlagFile('member-client-key', o.memberClientKey) };
  } else if (o.memberExec) {
    const [command, ...args] = o.memberExec.trim().split(/\s+/);
    if (!command) throw new SettingError('member-exec', 'want a command line');
    member = { exec: { command, args } };
  }
  if ('token' in credentials && member && 'token' in member && member.token === credentials.token)
    throw new SettingError('member-token', 'is the hub token: a member gets its own credential, never the hub\'s');

  let pinned: Map<string, string>;
  let servers: Map<string, string>;
  try {
    pinned = namedValues('member-ca', o.memberCa);
    servers = namedValues('member-server', o.memberServer);
  } catch (err) {
    throw new SettingError(o.memberCa.length > 0 ? 'member-ca' : 'member-server', (err as Error).message.replace(/^--[a-z-]+:? ?/, ''));
  }
  const names =
    o.clusters === 'all' ? (await admin.fetchClusters(o.admin)).clusters.map((c) => c.name) : o.clusters.split(',').map((s) => s.trim()).filter(Boolean);
  for (const name of [...pinned.keys(), ...servers.keys()])
    if (!names.includes(name)) throw new SettingError(pinned.has(name) ? 'member-ca' : 'member-server', `${name} is not among the clusters (${names.join(', ') || 'none'})`);

  if (o.mode === 'l7' && (member || pinned.size > 0 || servers.size > 0))
    notes.push('note: --member-* flags apply to CONNECT mode only; L7 contexts use the hub credential, and the agent impersonates it');
  const permitted = permittedNamesOf(hubCA);
  const clusters: KubeconfigInput['clusters'] = [];
  for (const name of names) {
    if (o.mode === 'l7') {
      clusters.push({ name });
      continue;
    }
    const entry: KubeconfigInput['clusters'][number] = { name };
    const server = servers.get(name);
    if (server !== undefined) {
      let url: URL;
      try {
        url = new URL(server);
      } catch {
        throw new SettingError('member-server', `${name}: want https://HOST[:PORT], got ${JSON.stringify(server)}`);
      }
      if (url.protocol !== 'https:' || url.pathname !== '/' || url.username || url.search)
        throw new SettingError('member-server', `${name}: want https://HOST[:PORT], got ${JSON.stringify(server)}`);
      const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
      if (permitted === undefined || namePermitted(host, permitted))
        throw new SettingError('member-server', `${name}: the hub CA can sign ${host}, so the hub could pass for this member: use a name only the member's certificate carries`);
      entry.memberServer = url.origin;
    }
    const pinFile = pinned.get(name);
    const memberCA = pinFile !== undefined ? readFlagFile('member-ca', pinFile) : await admin.fetchClusterCA(o.admin, name);
    if (memberCA) {
      const prints = fingerprints(memberCA);
      if (prints.length === 0) throw new SettingError('member-ca', `${name}: ${pinFile ?? 'the reported CA'} holds no PEM certificate`);
      const source = pinFile !== undefined ? `pinned from ${pinFile}` : `as its agent reported it; check it, or pin it with --member-ca ${name}=FILE`;
      for (const p of prints) notes.push(`${name}: apiserver CA ${p} (${source})`);
      entry.memberCA = memberCA;
    } else notes.push(`warning: no apiserver CA known for cluster ${name}; kubectl will not trust its apiserver (pin one with --member-ca ${name}=FILE)`);
    clusters.push(entry);
  }
  if (o.mode === 'connect') {
    if (permitted === undefined)
      notes.push(
        'warning: the hub CA (--ca) places no limit on the names it signs: whoever holds its key could pass for a member apiserver. ' +
          '`kubetunnel certs init` makes a hub CA limited to the hub\'s own names',
      );
    if (!member && 'token' in credentials)
      notes.push(
        'note: no member credential (--member-token, --member-client-cert/--member-client-key or --member-exec): the kubeconfig is written without one, ' +
          'and the member apiservers will see this user unauthenticated. The hub token is never sent to a member.',
      );
    if (!member && 'clientCert' in credentials)
      notes.push('note: kubectl presents the client certificate to the hub and to each member apiserver; a member authenticates it only if it trusts the kubetunnel client CA');
  }
  const text = buildKubeconfig({
    server: o.server,
    hubCA,
    modes: [o.mode],
    clusters,
    credentials,
    ...(member ? { member } : {}),
    l7ServerNameSuffix: Defaults.l7ServerNameSuffix,
  });
  return { text, notes, contexts: names.map((n) => n + (o.mode === 'l7' ? '-l7' : '')) };
}
