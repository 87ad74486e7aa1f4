/**
 * Behind a federation control plane: the CONNECT path driven the way
 * Karmada's member-cluster client drives it. Karmada builds a client-go
 * rest.Config from the Cluster object: `proxyURL` (https://hub:8090, its
 * userinfo the hub credential), `proxyHeader` (sent on CONNECT: here
 * X-Cluster-Name), and ONE TLS configuration (the Secret's caBundle, one
 * client identity), which Go applies both to the https proxy and, inside
 * the tunnel, to the member apiserver. Clients that are not ours do the
 * same here: curl with one CA bundle and one identity for both hops, and
 * @kubernetes/client-node from a kubeconfig (as a kubeconfig-driven
 * controller does), against `kubetunnel server` and `kubetunnel agent`
 * processes and stand-in member apiservers.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { stringify as toYaml } from 'yaml';
import {
  type Member,
  type ServerProc,
  ROOT,
  cli,
  expectIdle,
  run,
  startMember,
  startServerProc,
  stopMembers,
  tmpDir,
} from './harness.js';

const HUB_TOKEN = 'federation-hub-token';
const MEMBER_TOKEN = 'federation-member-token';
/** The controller's name at the hub; not a cluster name, so the cluster comes from X-Cluster-Name alone. */
const HUB_USER = 'karmada';

let dir: string;
let certDir: string;
let server: ServerProc;
const members = new Map<string, Member>();
let bundle: string;

beforeAll(async () => {
  dir = tmpDir('kubetunnel-federation-');
  certDir = path.join(dir, 'certs');
  await cli('certs', 'init', '--dir', certDir);
  await cli('certs', 'client', '--dir', certDir, '--user', 'federation-controller', '--group', 'federation');
  fs.writeFileSync(path.join(dir, 'tokens.csv'), `${HUB_TOKEN},${HUB_USER},1,"federation"\n`);
  server = await startServerProc(certDir, ['--token-file', path.join(dir, 'tokens.csv')]);
  const clientCA = fs.readFileSync(path.join(certDir, 'client-ca.crt'), 'utf8');
  for (const name of ['member-1', 'member-2'])
    members.set(
      name,
      await startMember({
        dir,
        certDir,
        server,
        name,
        tokens: { [MEMBER_TOKEN]: { user: 'federation-controller', groups: ['federation'] } },
        // Members trust the kubetunnel client CA too: one client certificate for both hops.
        ca: clientCA,
      }),
    );
  // Karmada's caBundle: the hub CA (for the proxy hop) + the members' CAs (for the member hop).
  bundle = path.join(dir, 'ca-bundle.crt');
  fs.writeFileSync(bundle, [path.join(certDir, 'ca.crt'), ...[...members.values()].map((m) => m.caFile)].map((f) => fs.readFileSync(f, 'utf8')).join(''));
});

afterAll(async () => {
  await stopMembers(server, members.values());
  fs.rmSync(dir, { recursive: true, force: true });
});

afterEach(() => expectIdle(server.adminUrl));

/** curl as client-go with one TLS configuration: the same CA bundle (and client identity) for the proxy and the member. */
function curlAsClientGo(o: { cluster: string; path: string; ca?: string; identity: 'token' | 'certificate' }): Promise<string> {
  const ca = o.ca ?? bundle;
  const cert = path.join(certDir, 'client-federation-controller.crt');
  const key = path.join(certDir, 'client-federation-controller.key');
  return run('curl', [
    '-sS', '--fail', '--max-time', '20',
    '--proxy', `https://127.0.0.1:${server.proxy}`,
    '--proxy-header', `X-Cluster-Name: ${o.cluster}`,
    '--proxy-cacert', ca,
    '--cacert', ca,
    ...(o.identity === 'token'
      ? // proxyURL https://karmada:TOKEN@hub:8090: Go sends its userinfo as Proxy-Authorization: Basic; the member gets the Secret's token.
        ['--proxy-user', `${HUB_USER}:${HUB_TOKEN}`, '-H', `Authorization: Bearer ${MEMBER_TOKEN}`]
      : // TLSClientConfig.Certificates: presented to the hub and to the member alike.
        ['--proxy-cert', cert, '--proxy-key', key, '--cert', cert, '--key', key]),
    `https://kubernetes.default.svc${o.path}`,
  ]);
}

describe('CONNECT as a federation control plane drives it', () => {
  it.each(['token', 'certificate'] as const)('one CA bundle and one %s identity for both hops: /version and a list, routed by X-Cluster-Name', async (identity) => {
    for (const cluster of ['member-1', 'member-2']) {
      const version = JSON.parse(await curlAsClientGo({ cluster, path: '/version', identity })) as { cluster: string };
      expect(version.cluster).toBe(cluster);
      const list = JSON.parse(await curlAsClientGo({ cluster, path: '/api/v1/namespaces', identity })) as { kind: string; items: Array<{ metadata: { name: string } }> };
      expect(list.kind).toBe('NamespaceList');
      expect(list.items.map((n) => n.metadata.name)).toContain(`${cluster}-apps`);
    }
  });

  it('the bundle must hold both CAs: without the member CA the member hop fails, without the hub CA the proxy hop does', async () => {
    const hubOnly = path.join(dir, 'hub-only.crt');
    fs.copyFileSync(path.join(certDir, 'ca.crt'), hubOnly);
    // The tunnel is established (the hub is trusted); curl then refuses the member ("unknown CA" alert),
    // which curl 7.88 reports through an https proxy as (35) in connection to the member, later ones as (60).
    await expect(curlAsClientGo({ cluster: 'member-1', path: '/version', identity: 'token', ca: hubOnly })).rejects.toThrow(
      /curl: \((35\)[^\n]*kubernetes\.default\.svc|60\))/,
    );
    const memberOnly = members.get('member-1')!.caFile;
    await expect(curlAsClientGo({ cluster: 'member-1', path: '/version', identity: 'token', ca: memberOnly })).rejects.toThrow(/curl: \(60\) SSL certificate problem/);
  });

  it('a kubeconfig-driven controller (@kubernetes/client-node): cluster in the proxy URL, the hub CA from NODE_EXTRA_CA_CERTS', async () => {
    // client-node sends CONNECT through hpagent, whose request to the proxy
    // uses Node's default trust, not the kubeconfig's CA and certificate:
    // the hub CA must come from NODE_EXTRA_CA_CERTS, the hub credential
    // from the proxy URL (Basic: the cluster as the user name, as kubectl).
    const kubeconfig = path.join(dir, 'client-node.kubeconfig');
    fs.writeFileSync(
      kubeconfig,
      toYaml({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: ['member-1', 'member-2'].map((name) => ({
          name,
          cluster: {
            server: 'https://kubernetes.default.svc',
            'proxy-url': `https://${name}:${HUB_TOKEN}@127.0.0.1:${server.proxy}`,
            'certificate-authority': bundle,
          },
        })),
        users: [{ name: 'member', user: { token: MEMBER_TOKEN } }],
        contexts: ['member-1', 'member-2'].map((name) => ({ name, context: { cluster: name, user: 'member' } })),
        'current-context': 'member-1',
      }),
    );
    const script = path.join(dir, 'controller.mjs');
    fs.writeFileSync(
      script,
      `import * as k8s from ${JSON.stringify(path.join(ROOT, 'node_modules/@kubernetes/client-node/dist/index.js'))};
const base = new k8s.KubeConfig();
base.loadFromFile(process.argv[2]);
const out = {};
for (const context of ['member-1', 'member-2']) {
  base.setCurrentContext(context);
  const list = await base.makeApiClient(k8s.CoreV1Api).listNamespace();
  out[context] = list.items.map((n) => n.metadata.name);
}
console.log(JSON.stringify(out));
`,
    );
    const out = JSON.parse(await run(process.execPath, [script, kubeconfig], { NODE_EXTRA_CA_CERTS: path.join(certDir, 'ca.crt') })) as Record<string, string[]>;
    expect(out['member-1']).toContain('member-1-apps');
    expect(out['member-2']).toContain('member-2-apps');
    // Without it, the proxy hop fails: the kubeconfig's CA never reaches it.
    await expect(run(process.execPath, [script, kubeconfig], { NODE_EXTRA_CA_CERTS: '' })).rejects.toThrow(/certificate/i);
  });
});
