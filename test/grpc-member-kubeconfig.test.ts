/**
 * --member-kubeconfig NAME=FILE: what the hub reads from a member kubeconfig
 * to serve L7 through ANP agents, and the one-line errors for what it cannot
 * use (the hub impersonates callers with it, so it must be checked).
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readMemberKubeconfig, readMemberKubeconfigs } from '@kubetunnel/server';
import { createCA, issueClientCert } from '@kubetunnel/shared';
import { CLI, execFileP, tmpDir } from './harness.js';

const dir = tmpDir();
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const ca = createCA({ commonName: 'member CA' });
const client = issueClientCert(ca, { user: 'system:serviceaccount:kubetunnel:hub', groups: [] });
const b64 = (s: string) => Buffer.from(s).toString('base64');

function kubeconfig(name: string, cluster: Record<string, unknown>, user: Record<string, unknown>): string {
  const file = path.join(dir, name);
  fs.writeFileSync(
    file,
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'c', cluster }],
      users: [{ name: 'u', user }],
      contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
      'current-context': 'x',
    }),
  );
  return file;
}

describe('--member-kubeconfig', () => {
  it('reads the server, CA, server name and a client certificate (inline data), or a token file relative to the kubeconfig', () => {
    const inline = kubeconfig('inline', { server: 'https://10.0.0.1:6443', 'certificate-authority-data': b64(ca.cert), 'tls-server-name': 'api.member' }, {
      'client-certificate-data': b64(client.cert),
      'client-key-data': b64(client.key),
    });
    expect(readMemberKubeconfig(inline)).toEqual({ server: new URL('https://10.0.0.1:6443'), ca: ca.cert, servername: 'api.member', cert: client.cert, key: client.key });
    fs.writeFileSync(path.join(dir, 'ca.crt'), ca.cert);
    const files = kubeconfig('files', { server: 'https://kubernetes.default.svc', 'certificate-authority': 'ca.crt' }, { tokenFile: 'hub.token' });
    expect(readMemberKubeconfig(files)).toEqual({ server: new URL('https://kubernetes.default.svc'), ca: ca.cert, tokenFile: path.join(dir, 'hub.token') });
  });

  it.each([
    ['an exec user', { server: 'https://a' }, { exec: { command: 'x' } }, 'an exec or auth-provider user is not supported: give a token, tokenFile, or client certificate and key'],
    ['a plain http server', { server: 'http://a' }, { token: 't' }, 'server http://a/ is not https'],
    ['insecure-skip-tls-verify', { server: 'https://a', 'insecure-skip-tls-verify': true }, { token: 't' }, 'insecure-skip-tls-verify: the hub checks the member apiserver'],
    ['no credential', { server: 'https://a' }, {}, 'the user has no credential (token, tokenFile, or client certificate and key)'],
    ['a certificate without its key', { server: 'https://a' }, { 'client-certificate-data': b64(client.cert) }, 'client-certificate and client-key go together'],
  ])('refuses %s with a reason naming the file', (name, cluster, user, reason) => {
    const file = kubeconfig(name.replace(/\W/g, '_'), cluster, user);
    expect(() => readMemberKubeconfig(file)).toThrow(`${file}: ${reason}`);
  });

  it('NAME=FILE pairs: a malformed pair, an invalid name or a cluster given twice is an error', () => {
    const ok = kubeconfig('ok', { server: 'https://a' }, { token: 't' });
    expect([...readMemberKubeconfigs([`member-1=${ok}`]).keys()]).toEqual(['member-1']);
    expect(() => readMemberKubeconfigs([ok])).toThrow('want NAME=FILE');
    expect(() => readMemberKubeconfigs([`Bad_Name=${ok}`])).toThrow('"Bad_Name" is not a valid cluster name');
    expect(() => readMemberKubeconfigs([`m=${ok}`, `m=${ok}`])).toThrow('cluster m is given twice');
  });

  it('kubetunnel server refuses a kubeconfig it cannot use, at start, naming the flag', async () => {
    const bad = kubeconfig('bad', { server: 'https://a' }, { exec: { command: 'x' } });
    const err = await execFileP(process.execPath, [CLI, 'server', '--cert', bad, '--key', bad, '--client-ca', bad, '--member-kubeconfig', `member-1=${bad}`]).catch(
      (e: { code: number; stderr: string }) => e,
    );
    expect((err as { code: number }).code).not.toBe(0);
    expect((err as { stderr: string }).stderr).toContain('--member-kubeconfig');
    expect((err as { stderr: string }).stderr).toContain('an exec or auth-provider user is not supported');
  });
});
