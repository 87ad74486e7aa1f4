import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import {
  agentClusterOf,
  certsAgent,
  certsClient,
  certsInit,
  clientIdentityOf,
  createCA,
  issueAgentCert,
  issueClientCert,
  issueServerCert,
  parseSubjectAltName,
  type Pem,
} from '../src/pki/index.js';

const ca = createCA();
const server = issueServerCert(ca, { sans: ['localhost', '127.0.0.1', 'kubernetes.default.svc'] });
const agent = issueAgentCert(ca, { cluster: 'member-1' });
const client = issueClientCert(ca, { user: 'alice', groups: ['dev', 'ops'] });

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

/** A real TLS handshake: the server requires a client certificate from `ca`; returns what each side saw. */
async function handshake(clientPem: Pem, servername: string, trust = ca.cert) {
  const srv = tls.createServer({ cert: server.cert, key: server.key, ca: ca.cert, requestCert: true, rejectUnauthorized: true });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  cleanups.push(() => srv.close());
  const seen = new Promise<tls.PeerCertificate>((resolve) => srv.once('secureConnection', (s) => (resolve(s.getPeerCertificate()), s.end())));
  const port = (srv.address() as { port: number }).port;
  const sock = tls.connect({ host: '127.0.0.1', port, servername, ca: trust, cert: clientPem.cert, key: clientPem.key });
  cleanups.push(() => sock.destroy());
  // With TLS 1.3 the client may finish before the server rejects its certificate: the
  // server's verdict is what counts (its secureConnection, or an error on the client).
  const failed = new Promise<never>((_, reject) => {
    sock.once('error', reject);
    sock.once('close', () => reject(new Error('closed before the server accepted the certificate')));
  });
  return Promise.race([seen, failed]);
}

describe('certificates verified by Node TLS', () => {
  it.each(['localhost', 'kubernetes.default.svc'])('an agent certificate authenticates, server name %s', async (name) => {
    const peer = await handshake(agent, name);
    expect(agentClusterOf(peer)).toBe('member-1');
    expect(clientIdentityOf(peer)).toBeUndefined();
  });

  it('a client certificate carries user and groups, and no cluster', async () => {
    const peer = await handshake(client, 'localhost');
    expect(clientIdentityOf(peer)).toEqual({ user: 'alice', groups: ['dev', 'ops'] });
    expect(agentClusterOf(peer)).toBeUndefined();
  });

  it('a certificate from another CA is refused by the handshake', async () => {
    const other = createCA();
    await expect(handshake(issueClientCert(other, { user: 'mallory' }), 'localhost')).rejects.toThrow();
  });

  it('the agent certificate has the URI SAN and client use only (openssl)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pki-'));
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    fs.writeFileSync(path.join(dir, 'a.crt'), agent.cert);
    const text = execFileSync('openssl', ['x509', '-noout', '-text', '-in', path.join(dir, 'a.crt')]).toString();
    expect(text).toContain('URI:urn:kubetunnel:agent:member-1');
    expect(text).toMatch(/Extended Key Usage: *\n *TLS Web Client Authentication\n/);
  });

  it('refuses invalid cluster and user names', () => {
    expect(() => issueAgentCert(ca, { cluster: 'Member_1' })).toThrow(/invalid cluster name/);
    expect(() => issueClientCert(ca, { user: 'a\nb' })).toThrow(/control characters/);
  });
});

describe('subjectaltname parsing', () => {
  it('splits plain values', () => {
    expect(parseSubjectAltName('DNS:a, URI:urn:kubetunnel:agent:x, IP Address:127.0.0.1')).toEqual([
      ['DNS', 'a'],
      ['URI', 'urn:kubetunnel:agent:x'],
      ['IP Address', '127.0.0.1'],
    ]);
  });
  it('keeps a quoted value with commas as one value', () => {
    const parsed = parseSubjectAltName('URI:"urn:kubetunnel:agent:a,URI:urn:kubetunnel:agent:b", DNS:x');
    expect(parsed).toEqual([
      ['URI', 'urn:kubetunnel:agent:a,URI:urn:kubetunnel:agent:b'],
      ['DNS', 'x'],
    ]);
    // Such a value names no valid cluster.
    expect(agentClusterOf({ subject: { CN: 'x' }, subjectaltname: 'URI:"urn:kubetunnel:agent:a,URI:urn:kubetunnel:agent:b"' } as never)).toBeUndefined();
  });
  it('an agent certificate with two cluster URIs binds none', () => {
    expect(agentClusterOf({ subject: { CN: 'x' }, subjectaltname: 'URI:urn:kubetunnel:agent:a, URI:urn:kubetunnel:agent:b' } as never)).toBeUndefined();
  });
});

describe('certs files', () => {
  it('writes the contract file names with private keys at 0600, and reuses the CA', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pki-'));
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const init = certsInit(dir, { sans: ['hub.example'] });
    expect(init.files.map((f) => path.basename(f)).sort()).toEqual(['ca.crt', 'ca.key', 'server.crt', 'server.key']);
    const caBefore = fs.readFileSync(path.join(dir, 'ca.crt'), 'utf8');
    expect(certsInit(dir, {}).files.map((f) => path.basename(f)).sort()).toEqual(['server.crt', 'server.key']);
    expect(fs.readFileSync(path.join(dir, 'ca.crt'), 'utf8')).toBe(caBefore);
    certsAgent(dir, { cluster: 'member-2' });
    certsClient(dir, { user: 'bob', groups: ['g'] });
    for (const f of ['ca.key', 'server.key', 'agent-member-2.key', 'client-bob.key'])
      expect(fs.statSync(path.join(dir, f)).mode & 0o777).toBe(0o600);
    expect(() => certsClient(dir, { user: '../x' })).toThrow(/file name/);
    expect(() => certsAgent(fs.mkdtempSync(path.join(os.tmpdir(), 'empty-')), { cluster: 'x' })).toThrow(/no CA/);
  });
});
