import { stringify } from 'yaml';

export interface KubeconfigInput {
  /** https://HOST:PORT of the hub's frontend. */
  server: string;
  /** PEM of the hub CA. */
  hubCA: string;
  modes: Array<'connect' | 'l7'>;
  clusters: Array<{ name: string; memberCA?: string }>;
  credentials: { clientCert: string; clientKey: string } | { token: string };
  /** Bearer token for the member apiservers in CONNECT mode, when it differs from the hub token. */
  memberToken?: string;
  /** CONNECT mode: the server name kubectl checks on the hub and on the member. */
  tlsServerName: string;
  /** L7 mode: contexts use the server name <cluster>.<suffix>. */
  l7ServerNameSuffix: string;
}

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

/**
 * A kubeconfig with one context per cluster.
 *
 * CONNECT mode: kubectl sends `CONNECT <cluster>:443` to `proxy-url`, and with
 * an https proxy it uses the cluster's TLS settings for the proxy as well: it
 * checks the hub's certificate against `certificate-authority-data` with
 * server name `tls-server-name`, and presents the user's client certificate to
 * the hub and again to the member apiserver inside the tunnel. So the CA data
 * is the hub CA plus the member CA, the server name is one both certificates
 * carry (kubernetes.default.svc: every apiserver has it, and the hub's
 * certificate gets it from `kubetunnel certs init`), and a token goes to the
 * hub as proxy-url userinfo (kubectl turns it into Proxy-Authorization).
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
  const token = 'token' in creds ? creds.token : undefined;
  const certData =
    'clientCert' in creds
      ? { 'client-certificate-data': b64(creds.clientCert), 'client-key-data': b64(creds.clientKey) }
      : undefined;
  const clusters = [];
  const contexts = [];
  const users = [];
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
        if (token !== undefined) {
          proxy.username = 'kubetunnel';
          proxy.password = token;
        }
        cluster = {
          server: `https://${c.name}:443`,
          'proxy-url': proxy.toString().replace(/\/$/, ''),
          'certificate-authority-data': b64(input.hubCA.trimEnd() + '\n' + (c.memberCA ?? '')),
        };
      }
      cluster['tls-server-name'] ??= input.tlsServerName;
      clusters.push({ name: c.name + suffix, cluster });
      contexts.push({ name: c.name + suffix, context: { cluster: c.name + suffix, user: userName } });
    }
    users.push({
      name: userName,
      user: certData ?? { token: mode === 'connect' ? (input.memberToken ?? token!) : token! },
    });
  }
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    preferences: {},
    clusters,
    users,
    contexts,
    'current-context': contexts[0]?.name ?? '',
  });
}
