/**
 * The demo (what `npm start` runs) and the federation-controller example
 * against it: one kubeconfig, every cluster.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { silentLogger } from '@kubetunnel/shared';
import { runDemo, type Demo } from '../packages/cli/src/commands/demo.js';
import { ROOT, hubTokensIn, run, tmpDir } from './harness.js';

let dir: string;
let demo: Demo;
let printed = '';
/** Every Authorization value the demo's member apiservers received. */
const memberCredentials: string[] = [];

beforeAll(async () => {
  dir = tmpDir();
  const out = new PassThrough();
  out.on('data', (d: Buffer) => (printed += d.toString()));
  demo = await runDemo({
    dir: path.join(dir, 'demo'),
    ports: { proxy: 0, agent: 0, admin: 0, health: 0 },
    out,
    log: silentLogger(),
    onMemberCredential: (_cluster, value) => memberCredentials.push(value),
  });
});

afterAll(async () => {
  await demo.close();
  // The hub tokens (demo/tokens.csv) never reached a member apiserver, in CONNECT or L7 mode.
  expect(memberCredentials.length).toBeGreaterThan(0);
  expect(hubTokensIn(memberCredentials, ['demo-admin-token', 'demo-dev-token'])).toEqual([]);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('demo', () => {
  it('prints the kubectl lines to try, and they work', async () => {
    expect(printed).toContain('kubectl --context member-1 get --raw /version');
    expect(printed).toContain('kubectl --context member-1-l7 auth whoami');
    const kc = ['--kubeconfig', demo.kubeconfig];
    expect(JSON.parse(await run('kubectl', [...kc, '--context', 'member-1', 'get', '--raw', '/version'])).cluster).toBe('member-1');
    expect(await run('kubectl', [...kc, '--context', 'member-2', 'get', 'namespaces', '-o', 'name'])).toContain('namespace/member-2-apps');
    const who = JSON.parse(await run('kubectl', [...kc, '--context', 'member-1-l7', 'auth', 'whoami', '-o', 'json']));
    expect(who.status.userInfo.username).toBe('admin');
  });

  it('uses the two-CA layout, and its CONNECT contexts keep the hub token for the hub', () => {
    const certs = path.join(dir, 'demo', 'certs');
    expect(fs.readdirSync(certs)).toEqual(expect.arrayContaining(['ca.crt', 'client-ca.crt', 'server.crt']));
    const kc = parseYaml(fs.readFileSync(demo.kubeconfig, 'utf8'));
    const m1 = kc.clusters.find((c: { name: string }) => c.name === 'member-1').cluster;
    expect(m1.server).toBe('https://kubernetes.default.svc');
    expect(m1['tls-server-name']).toBeUndefined();
    expect(m1['proxy-url']).toMatch(/^https:\/\/member-1:demo-admin-token@127\.0\.0\.1:\d+$/);
    expect(kc.users.find((u: { name: string }) => u.name === 'kubetunnel-connect').user).toEqual({ token: 'demo-member-admin-token' });
    expect(fs.statSync(demo.kubeconfig).mode & 0o777).toBe(0o600);
    expect(printed).toMatch(/member-1 +apiserver CA SHA256 [0-9A-F:]{95}/);
  });

  it('the federation-controller example lists and watches namespaces in both clusters', async () => {
    const child = spawn(process.execPath, [path.join(ROOT, 'examples/federation-controller/dist/main.js'), '--watch-for', '60s'], {
      env: { ...process.env, KUBECONFIG: demo.kubeconfig },
    });
    let out = '';
    const waitFor = (text: string) =>
      new Promise<void>((resolve, reject) => {
        const check = () => out.includes(text) && resolve();
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          check();
        });
        child.once('exit', (code) => reject(new Error(`example exited ${code} before "${text}": ${out}`)));
        check();
      });
    try {
      await Promise.all([waitFor('[member-1-l7] watching namespaces'), waitFor('[member-2-l7] watching namespaces')]);
      expect(out).toContain('[member-1-l7] namespace member-1-apps (Active)');
      expect(out).toContain('[member-2-l7] namespace member-2-apps (Active)');
      demo.members.find((m) => m.name === 'member-2')!.apiserver.addNamespace('federated');
      await waitFor('[member-2-l7] ADDED namespace federated');
    } finally {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
  });
});
