/**
 * Join tokens, certificate requests and the agent certificates issued for
 * them, checked against OpenSSL where it has a say.
 */
import { spawnSync } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  caCertHash,
  createCA,
  createCsr,
  createJoinToken,
  issueAgentCertForKey,
  joinIdOf,
  MAX_CSR_BYTES,
  newAgentKey,
  parseCaCertHash,
  publicKeyOfCsr,
  publicKeysOf,
  verifyJoinToken,
} from '@kubetunnel/shared';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kubetunnel-join-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const ca = createCA({ commonName: 'client CA' });
const other = createCA({ commonName: 'another CA' });
const keys = publicKeysOf(ca.cert);

function openssl(args: string[], input?: string): { status: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync('openssl', args, { input });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

function file(name: string, text: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, text);
  return f;
}

describe('join tokens', () => {
  it('a token verifies with the CA that signed it and carries its claim', () => {
    const { token, claim } = createJoinToken(ca.key, { cluster: 'member-1', ttlMs: 60_000, uses: 3 });
    expect(verifyJoinToken(token, keys)).toEqual({ ok: true, claim });
    expect(claim).toMatchObject({ cluster: 'member-1', uses: 3 });
    expect(claim.id).toMatch(/^[0-9a-f]{16}$/);
  });

  it('an ES256 token from a P-256 CA key verifies', () => {
    const ec = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const { token } = createJoinToken(ec.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), { cluster: 'm', ttlMs: 60_000 });
    expect(JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString())).toMatchObject({ alg: 'ES256' });
    expect(verifyJoinToken(token, [ec.publicKey]).ok).toBe(true);
  });

  it('altered, foreign, malformed and expired tokens are refused, each with its reason', () => {
    const { token } = createJoinToken(ca.key, { cluster: 'member-1', ttlMs: 60_000, uses: 1 });
    const [h, p, s] = token.split('.') as [string, string, string];
    const claim = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
    const withClaim = (c: object) => `${h}.${Buffer.from(JSON.stringify(c)).toString('base64url')}.${s}`;
    const reason = (t: string) => {
      const r = verifyJoinToken(t, keys);
      return r.ok ? 'ok' : r.reason;
    };
    expect(reason(withClaim({ ...claim, cluster: 'member-2' }))).toBe('TOKEN_INVALID');
    expect(reason(withClaim({ ...claim, uses: 100 }))).toBe('TOKEN_INVALID');
    expect(reason(`${h}.${p}.${s.slice(0, -4)}AAAA`)).toBe('TOKEN_INVALID');
    expect(reason(createJoinToken(other.key, { cluster: 'member-1', ttlMs: 60_000 }).token)).toBe('TOKEN_INVALID');
    // The key decides the algorithm: a header naming another one, or none, is refused.
    const header = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
    expect(reason(`${header({ alg: 'ES256', typ: 'kubetunnel-join' })}.${p}.${s}`)).toBe('TOKEN_INVALID');
    const es256Header = header({ alg: 'ES256', typ: 'kubetunnel-join' });
    const confused = `${es256Header}.${p}.${sign('sha256', Buffer.from(`${es256Header}.${p}`), createPrivateKey(ca.key)).toString('base64url')}`;
    expect(reason(confused)).toBe('TOKEN_INVALID');
    expect(reason(`${header({ alg: 'none', typ: 'kubetunnel-join' })}.${p}.`)).toBe('TOKEN_INVALID');
    // Something else signed with the same key is not a join token.
    const jwtHeader = header({ alg: 'RS256', typ: 'JWT' });
    const jwt = `${jwtHeader}.${p}.${sign('sha256', Buffer.from(`${jwtHeader}.${p}`), createPrivateKey(ca.key)).toString('base64url')}`;
    expect(reason(jwt)).toBe('TOKEN_INVALID');
    for (const bad of ['', 'a.b', 'a.b.c.d', `${h}.${p}.${s}!`, 'x'.repeat(5000)]) expect(reason(bad), bad.slice(0, 20)).toBe('TOKEN_INVALID');
    const old = createJoinToken(ca.key, { cluster: 'member-1', ttlMs: 1000, now: Date.now() - 10_000 }).token;
    const r = verifyJoinToken(old, keys);
    expect(r).toMatchObject({ ok: false, reason: 'TOKEN_EXPIRED', message: expect.stringMatching(/expired at \d{4}-/) });
  });

  it('the CA hash is the SHA-256 of the SubjectPublicKeyInfo, as kubeadm computes it with openssl', () => {
    const pub = openssl(['x509', '-pubkey', '-noout'], ca.cert);
    const der = openssl(['pkey', '-pubin', '-outform', 'der'], pub.stdout.toString());
    expect(caCertHash(ca.cert)).toBe(`sha256:${createHash('sha256').update(der.stdout).digest('hex')}`);
    expect(parseCaCertHash(caCertHash(ca.cert).toUpperCase().replace('SHA256', 'sha256'))).toBe(caCertHash(ca.cert));
    expect(parseCaCertHash('sha256:abc')).toBeUndefined();
    expect(parseCaCertHash('md5:' + 'a'.repeat(64))).toBeUndefined();
  });
});

describe('certificate requests and agent certificates', () => {
  it('a request made here verifies with openssl, and one made by openssl is read here', () => {
    const key = newAgentKey();
    const csr = createCsr(key);
    expect(openssl(['req', '-verify', '-noout'], csr).status).toBe(0);
    expect(publicKeyOfCsr(csr).export({ type: 'spki', format: 'der' })).toEqual(createPublicKey(createPrivateKey(key)).export({ type: 'spki', format: 'der' }));
    const keyFile = file('ossl.key', key);
    const made = openssl(['req', '-new', '-key', keyFile, '-subj', '/CN=ignored']);
    expect(made.status, made.stderr).toBe(0);
    expect(publicKeyOfCsr(made.stdout.toString()).asymmetricKeyType).toBe('ec');
  });

  it('a request whose signature does not verify, with a weak or other key, too large or malformed is refused', () => {
    const csr = createCsr(newAgentKey());
    const der = Buffer.from(csr.replace(/-----[^-]+-----|\s/g, ''), 'base64');
    const flipped = Buffer.from(der);
    flipped[der.length - 1] = flipped[der.length - 1]! ^ 0x01; // the last byte of the signature's s
    const pem = (b: Buffer) => `-----BEGIN CERTIFICATE REQUEST-----\n${b.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
    expect(() => publicKeyOfCsr(pem(flipped))).toThrow(/certificate request signature does not verify/);
    // Another key's request with this one's public key: the signature proves nothing.
    const otherCsr = Buffer.from(createCsr(newAgentKey()).replace(/-----[^-]+-----|\s/g, ''), 'base64');
    const spliced = Buffer.concat([der.subarray(0, der.length - 72), otherCsr.subarray(otherCsr.length - 72)]);
    expect(() => publicKeyOfCsr(pem(spliced))).toThrow(/certificate request/);
    const p384 = file('p384.key', generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString());
    const p384Csr = openssl(['req', '-new', '-key', p384, '-subj', '/CN=x']).stdout.toString();
    expect(() => publicKeyOfCsr(p384Csr)).toThrow(/ECDSA P-256 or RSA of at least 2048 bits/);
    const rsa1024 = file('rsa1024.key', generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString());
    const weak = openssl(['req', '-new', '-key', rsa1024, '-subj', '/CN=x']).stdout.toString();
    expect(() => publicKeyOfCsr(weak)).toThrow(/at least 2048 bits/);
    expect(() => publicKeyOfCsr('x'.repeat(MAX_CSR_BYTES + 1))).toThrow(/larger than/);
    expect(() => publicKeyOfCsr(ca.cert)).toThrow(/not a PEM certificate request/);
    expect(() => publicKeyOfCsr(pem(Buffer.from('not der')))).toThrow(/certificate request/);
  });

  it('an agent certificate for the requester\'s key is bound to the cluster, names its token, and verifies with openssl for client use only', () => {
    const key = newAgentKey();
    const pem = issueAgentCertForKey(ca, { publicKey: publicKeyOfCsr(createCsr(key)), cluster: 'member-1', joinId: 'abc123', validMs: 30 * 24 * 3600 * 1000 });
    const x = new X509Certificate(pem);
    expect(x.checkPrivateKey(createPrivateKey(key))).toBe(true);
    expect(x.subjectAltName).toBe('URI:urn:kubetunnel:agent:member-1, URI:urn:kubetunnel:join:abc123');
    expect(joinIdOf(x.subjectAltName)).toBe('abc123');
    expect(x.verify(new X509Certificate(ca.cert).publicKey)).toBe(true);
    expect(x.ca).toBe(false);
    const lifetime = Date.parse(x.validTo) - Date.now();
    expect(lifetime).toBeGreaterThan(29.9 * 24 * 3600 * 1000);
    expect(lifetime).toBeLessThanOrEqual(30 * 24 * 3600 * 1000);
    const caFile = file('ca.crt', ca.cert);
    const certFile = file('agent.crt', pem);
    expect(openssl(['verify', '-CAfile', caFile, '-purpose', 'sslclient', certFile]).status).toBe(0);
    expect(openssl(['verify', '-CAfile', caFile, '-purpose', 'sslserver', certFile]).status).not.toBe(0);
    expect(() => issueAgentCertForKey(ca, { publicKey: x.publicKey, cluster: 'Not_A_Label', validMs: 60_000 })).toThrow(/invalid cluster name/);
  });
});
