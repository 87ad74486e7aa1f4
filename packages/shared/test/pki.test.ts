import { execFileSync, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isValidClusterName } from '../src/names.js';
import { clientContext } from '../src/tls.js';
import { forgeCert } from './helpers.js';
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
  loadCA,
  parseSubjectAltName,
  permittedNamesOf,
  replaceFile,
  serviceNameProblem,
  type Pem,
} from '../src/pki/index.js';

const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
/** A peer certificate as Node reports it, for the client role (clientAuth usage). */
const peer = (subjectaltname: string, subject: Record<string, string | string[]> = { CN: 'x' }) =>
  ({ subject, subjectaltname, ext_key_usage: [CLIENT_AUTH] }) as unknown as tls.PeerCertificate;

const servers: tls.Server[] = [];
const sockets: net.Socket[] = [];
const dirs: string[] = [];

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kubetunnel-pki-'));
  dirs.push(dir);
  return dir;
}

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(servers.splice(0).map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

/** The certificates `kubetunnel certs` writes, read back from their files. */
interface Pki {
  dir: string;
  /** The hub CA: signs the server certificate. */
  ca: Pem;
  /** The client CA: signs agent and client certificates. */
  clientCA: Pem;
  server: Pem;
  agent: Pem;
  client: Pem;
}

function makePki(): Pki {
  const dir = tempDir();
  certsInit(dir, { sans: ['hub.example', '::1'] });
  certsAgent(dir, { cluster: 'member-1' });
  certsClient(dir, { user: 'alice@example.com', groups: ['dev', 'ops'] });
  const read = (base: string): Pem => ({
    cert: fs.readFileSync(path.join(dir, `${base}.crt`), 'utf8'),
    key: fs.readFileSync(path.join(dir, `${base}.key`), 'utf8'),
  });
  return { dir, ca: read('ca'), clientCA: read('client-ca'), server: read('server'), agent: read('agent-member-1'), client: read('client-alice@example.com') };
}

/**
 * A real TLS handshake against a server (the PKI's server certificate) that
 * requires a client certificate from the PKI's client CA (or `clientCA`).
 * Each side's verdict is its own promise: with TLS 1.3 the
 * client may finish before the server refuses its certificate, and the server
 * may accept before the client refuses the server's name.
 */
async function handshake(pki: Pki, client: Pem, options: tls.ConnectionOptions, clientCA = pki.clientCA.cert) {
  const srv = tls.createServer({ cert: pki.server.cert, key: pki.server.key, ca: clientCA, requestCert: true, rejectUnauthorized: true });
  servers.push(srv);
  srv.on('connection', (s) => sockets.push(s));
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const accepted = new Promise<tls.PeerCertificate>((resolve, reject) => {
    srv.once('secureConnection', (s) => resolve(s.getPeerCertificate()));
    srv.once('tlsClientError', (err) => reject(new Error(`server refused: ${err.message}`)));
  });
  const sock = tls.connect({
    host: '127.0.0.1',
    port: (srv.address() as net.AddressInfo).port,
    ca: pki.ca.cert,
    cert: client.cert,
    key: client.key,
    ...options,
  });
  sockets.push(sock);
  const connected = new Promise<void>((resolve, reject) => {
    sock.once('secureConnect', () => resolve());
    sock.once('error', (err) => reject(new Error(`client refused: ${err.message}`)));
  });
  // Each test awaits the verdict it cares about; the other must not surface as unhandled.
  accepted.catch(() => {});
  connected.catch(() => {});
  return { accepted, connected };
}

/** Both sides accept; what the server saw of the client. */
async function connect(pki: Pki, client: Pem, options: tls.ConnectionOptions, clientCA?: string): Promise<tls.PeerCertificate> {
  const h = await handshake(pki, client, options, clientCA);
  const [peer] = await Promise.all([h.accepted, h.connected]);
  return peer;
}

/** A client certificate with arbitrary URI SANs, signed by `ca` with forge directly (issue* would refuse these names). */
function forgeClientCert(ca: Pem, uris: string[], eku: { clientAuth?: boolean; serverAuth?: boolean } = { clientAuth: true }): Pem {
  return forgeCert(ca, { commonName: 'forged', serial: '0a', eku, altNames: uris.map((value) => ({ type: 6, value })) });
}

function openssl(args: string[], file: string): string {
  return execFileSync('openssl', [...args, '-in', file], { encoding: 'utf8' });
}

describe('certificates verified by Node TLS', () => {
  let pki: Pki;
  beforeEach(() => {
    pki = makePki();
  });

  it.each(['localhost', 'hub.example', 'member-1.clusters.kubetunnel'])(
    'an agent certificate authenticates and binds its cluster (server name %s)',
    async (servername) => {
      const peer = await connect(pki, pki.agent, { servername });
      expect(agentClusterOf(peer)).toBe('member-1');
      expect(clientIdentityOf(peer)).toBeUndefined();
    },
  );

  it('the server certificate is valid for 127.0.0.1 (IP SAN, no server name)', async () => {
    const peer = await connect(pki, pki.agent, {});
    expect(agentClusterOf(peer)).toBe('member-1');
  });

  it('a client certificate carries user and groups, and no cluster', async () => {
    for (const servername of ['localhost', 'hub.example']) {
      const peer = await connect(pki, pki.client, { servername });
      expect(clientIdentityOf(peer)).toEqual({ user: 'alice@example.com', groups: ['dev', 'ops'] });
      expect(agentClusterOf(peer)).toBeUndefined();
    }
  });

  it('a certificate from another CA is refused by the server', async () => {
    const mallory = issueClientCert(createCA(), { user: 'mallory' });
    const h = await handshake(pki, mallory, { servername: 'localhost' });
    await expect(h.accepted).rejects.toThrow(/server refused/);
  });

  it('the client refuses a server name the certificate does not carry', async () => {
    const h = await handshake(pki, pki.client, { servername: 'elsewhere.example' });
    await expect(h.connected).rejects.toThrow(/client refused/);
  });

  it('a quoted URI with a comma is one value in a real peer certificate, and binds no cluster', async () => {
    const forged = forgeClientCert(pki.clientCA, ['urn:kubetunnel:agent:a,URI:urn:kubetunnel:agent:b']);
    const peer = await connect(pki, forged, { servername: 'localhost' });
    // Node quotes the value and escapes the comma inside it.
    expect(peer.subjectaltname).toBe('URI:"urn:kubetunnel:agent:a\\u002cURI:urn:kubetunnel:agent:b"');
    expect(parseSubjectAltName(peer.subjectaltname)).toEqual([['URI', 'urn:kubetunnel:agent:a,URI:urn:kubetunnel:agent:b']]);
    expect(agentClusterOf(peer)).toBeUndefined();
    expect(clientIdentityOf(peer)).toBeUndefined(); // it still looks like an agent certificate
  });

  it('openssl: agent certificate has the URI SAN and client use only', () => {
    const text = openssl(['x509', '-noout', '-text'], path.join(pki.dir, 'agent-member-1.crt'));
    expect(text).toContain('URI:urn:kubetunnel:agent:member-1');
    expect(text).toMatch(/Extended Key Usage: *\n *TLS Web Client Authentication\n/);
    expect(text).toContain('CA:FALSE');
    expect(text).toMatch(/Subject: CN *= *kubetunnel-agent:member-1, O *= *kubetunnel:agents/);
  });

  it('openssl: client certificate has user and groups as UTF8 strings, client use only, no URI', () => {
    const file = path.join(pki.dir, 'client-alice@example.com.crt');
    const text = openssl(['x509', '-noout', '-text'], file);
    expect(text).toMatch(/Extended Key Usage: *\n *TLS Web Client Authentication\n/);
    expect(text).not.toContain('URI:');
    // Go (kubectl) rejects '@' in forge's default PrintableString.
    expect(openssl(['x509', '-noout', '-subject', '-nameopt', 'sep_comma_plus,show_type'], file)).toContain(
      'subject=CN=UTF8STRING:alice@example.com,O=UTF8STRING:dev,O=UTF8STRING:ops',
    );
  });

  it('openssl: server and CA certificates, positive 16-byte serials', () => {
    const server = openssl(['x509', '-noout', '-text'], path.join(pki.dir, 'server.crt'));
    for (const name of ['DNS:localhost', 'IP Address:127.0.0.1', 'DNS:*.clusters.kubetunnel', 'DNS:hub.example', 'IP Address:0:0:0:0:0:0:0:1'])
      expect(server).toContain(name);
    expect(server).not.toContain('DNS:kubernetes');
    for (const f of ['ca', 'client-ca']) {
      const ca = openssl(['x509', '-noout', '-text'], path.join(pki.dir, `${f}.crt`));
      expect(ca).toMatch(/CA:TRUE/);
      expect(ca).toMatch(/Certificate Sign, CRL Sign/);
    }
    for (const f of ['ca', 'client-ca', 'server', 'agent-member-1', 'client-alice@example.com'])
      expect(openssl(['x509', '-noout', '-serial'], path.join(pki.dir, `${f}.crt`)).trim()).toMatch(/^serial=(0[1-9A-F]|[1-7][0-9A-F])[0-9A-F]{30}$/);
  });

  it('openssl: leaf keys are ECDSA P-256 for signatures only, CA keys RSA 2048; each key belongs to its certificate', () => {
    for (const f of ['server', 'agent-member-1', 'client-alice@example.com']) {
      const text = openssl(['x509', '-noout', '-text'], path.join(pki.dir, `${f}.crt`));
      expect(text, f).toMatch(/Public Key Algorithm: id-ecPublicKey\n *Public-Key: \(256 bit\)[\s\S]*NIST CURVE: P-256/);
      expect(text, f).toMatch(/X509v3 Key Usage: critical\n *Digital Signature\n/);
      expect(text, f).toMatch(/Signature Algorithm: sha256WithRSAEncryption/);
      const keyPublic = openssl(['pkey', '-pubout'], path.join(pki.dir, `${f}.key`));
      expect(openssl(['x509', '-noout', '-pubkey'], path.join(pki.dir, `${f}.crt`)), f).toBe(keyPublic);
    }
    for (const f of ['ca', 'client-ca']) expect(openssl(['x509', '-noout', '-text'], path.join(pki.dir, `${f}.crt`)), f).toMatch(/Public-Key: \(2048 bit\)/);
  });
});

describe('certificate roles and the two CAs', () => {
  let pki: Pki;
  beforeEach(() => {
    pki = makePki();
  });

  it('the server certificate is for serving only: no clientAuth usage', () => {
    const text = openssl(['x509', '-noout', '-text'], path.join(pki.dir, 'server.crt'));
    expect(text).toMatch(/Extended Key Usage: *\n *TLS Web Server Authentication\n/);
    expect(text).not.toContain('TLS Web Client Authentication');
  });

  it('the server certificate does not authenticate as a user or an agent, even where its CA is trusted for clients', async () => {
    // One CA for everything (the older layout): the server certificate is signed by a CA the server trusts for clients.
    const h = await handshake(pki, pki.server, { servername: 'localhost' }, pki.ca.cert);
    await expect(h.accepted).rejects.toThrow(/server refused/); // OpenSSL: no clientAuth usage, unsupported purpose
    // A serving certificate of the older kind, with clientAuth beside serverAuth: TLS accepts it, kubetunnel does not.
    const both = forgeClientCert(pki.ca, [], { serverAuth: true, clientAuth: true });
    const peer = await connect(pki, both, { servername: 'localhost' }, pki.ca.cert);
    expect(peer.subject.CN).toBe('forged');
    expect(clientIdentityOf(peer)).toBeUndefined();
    expect(agentClusterOf(peer)).toBeUndefined();
  });

  it('a certificate without clientAuth usage, or with serverAuth beside it, is no client and no agent', () => {
    const user = peer('', { CN: 'bob' });
    expect(clientIdentityOf({ ...user, ext_key_usage: [CLIENT_AUTH] } as tls.PeerCertificate)).toEqual({ user: 'bob', groups: [] });
    expect(clientIdentityOf({ ...user, ext_key_usage: [] } as unknown as tls.PeerCertificate)).toBeUndefined();
    expect(clientIdentityOf({ ...user, ext_key_usage: undefined } as unknown as tls.PeerCertificate)).toBeUndefined();
    expect(clientIdentityOf({ ...user, ext_key_usage: [SERVER_AUTH] } as tls.PeerCertificate)).toBeUndefined();
    expect(clientIdentityOf({ ...user, ext_key_usage: [CLIENT_AUTH, SERVER_AUTH] } as tls.PeerCertificate)).toBeUndefined();
    const agent = peer('URI:urn:kubetunnel:agent:member-1', { CN: 'a' });
    expect(agentClusterOf({ ...agent, ext_key_usage: [SERVER_AUTH] } as tls.PeerCertificate)).toBeUndefined();
    expect(agentClusterOf({ ...agent, ext_key_usage: [CLIENT_AUTH, SERVER_AUTH] } as tls.PeerCertificate)).toBeUndefined();
  });

  it('agent and client certificates come from the client CA, the server certificate from the hub CA', () => {
    const verifies = (leaf: string, ca: string) => new X509Certificate(leaf).verify(new X509Certificate(ca).publicKey);
    expect(verifies(pki.server.cert, pki.ca.cert)).toBe(true);
    expect(verifies(pki.server.cert, pki.clientCA.cert)).toBe(false);
    for (const leaf of [pki.agent.cert, pki.client.cert]) {
      expect(verifies(leaf, pki.clientCA.cert)).toBe(true);
      expect(verifies(leaf, pki.ca.cert)).toBe(false);
    }
    // So an agent or client certificate is refused where only the hub CA is trusted.
    expect(new X509Certificate(pki.ca.cert).checkIssued(new X509Certificate(pki.clientCA.cert))).toBe(false);
  });

  it('the hub CA may sign only the hub\'s names: a certificate it signs for a member apiserver\'s name is refused', async () => {
    expect(permittedNamesOf(pki.ca.cert)).toEqual(['localhost', '127.0.0.1', 'clusters.kubetunnel', 'hub.example', '0:0:0:0:0:0:0:1']);
    expect(permittedNamesOf(pki.clientCA.cert)).toBeUndefined();
    // Whoever holds the hub CA key signs a certificate for the member's names ...
    const impostor = issueServerCert(pki.ca, { sans: ['kubernetes.default.svc', 'member-1'] });
    const file = path.join(pki.dir, 'impostor.crt');
    fs.writeFileSync(file, impostor.cert);
    // ... and OpenSSL refuses it for those names ...
    const out = spawnSync('openssl', ['verify', '-CAfile', path.join(pki.dir, 'ca.crt'), file], { encoding: 'utf8' });
    expect(out.status).not.toBe(0);
    expect(out.stdout + out.stderr).toMatch(/permitted subtree violation/);
    // ... as does Node's TLS client.
    const srv = tls.createServer({ cert: impostor.cert, key: impostor.key });
    servers.push(srv);
    srv.on('connection', (s) => sockets.push(s));
    srv.on('tlsClientError', () => {});
    srv.listen(0, '127.0.0.1');
    await once(srv, 'listening');
    const sock = tls.connect({ host: '127.0.0.1', port: (srv.address() as net.AddressInfo).port, ca: pki.ca.cert, servername: 'kubernetes.default.svc' });
    sockets.push(sock);
    const [err] = (await once(sock, 'error')) as [NodeJS.ErrnoException];
    expect(err.message).toMatch(/permitted subtree violation/);
    // The hub's own certificate verifies under the same CA.
    expect(spawnSync('openssl', ['verify', '-CAfile', path.join(pki.dir, 'ca.crt'), path.join(pki.dir, 'server.crt')]).status).toBe(0);
  });
});

describe('client TLS contexts', () => {
  it('one per CA, certificate and key in a process; the few most recent kept', () => {
    const ca = createCA();
    const agent = issueAgentCert(ca, { cluster: 'c1' });
    const pem = { ca: ca.cert, cert: agent.cert, key: agent.key };
    const first = clientContext(pem);
    expect(clientContext({ ...pem })).toBe(first);
    expect(clientContext({ ca: ca.cert })).not.toBe(first);
    // The same text split otherwise between the parts is other material.
    expect(clientContext({ ca: ca.cert + agent.cert, key: agent.key })).not.toBe(first);
    // Eight other sets later, the first has been made again.
    for (let i = 1; i <= 8; i++) clientContext({ ...pem, ca: ca.cert + '\n'.repeat(i) });
    expect(clientContext(pem)).not.toBe(first);
  });
});

describe('issuing', () => {
  it('IPv6 SANs (also IPv4-mapped) and a non-ASCII CA name, checked by Node', () => {
    const ca = createCA({ commonName: 'Zürich CA' });
    const server = new X509Certificate(issueServerCert(ca, { sans: ['::1', '2001:db8::1', '::ffff:10.0.0.1', 'a.example'] }).cert);
    const caX = new X509Certificate(ca.cert);
    expect(server.checkIssued(caX)).toBe(true);
    expect(server.verify(caX.publicKey)).toBe(true);
    expect(server.checkIP('::1')).toBe('::1');
    expect(server.checkIP('2001:db8::1')).toBe('2001:db8::1');
    expect(server.checkIP('::ffff:10.0.0.1')).toBe('::ffff:10.0.0.1');
    expect(server.checkHost('a.example')).toBe('a.example');
  });

  it('refuses bad names with a clear message', () => {
    const ca = createCA();
    for (const cluster of ['Member_1', '', '-a', 'a-', 'a.b', 'a'.repeat(64)])
      expect(() => issueAgentCert(ca, { cluster })).toThrow(/invalid cluster name/);
    expect(() => issueClientCert(ca, { user: 'a\nb' })).toThrow(/control characters/);
    expect(() => issueClientCert(ca, { user: '' })).toThrow(/non-empty/);
    expect(() => issueClientCert(ca, { user: 'u', groups: ['kubetunnel:agents'] })).toThrow(/reserved/);
    expect(() => issueServerCert(ca, { sans: ['[::1]'] })).toThrow(/invalid server name/);
    expect(() => issueServerCert(ca, { sans: ['a b'] })).toThrow(/invalid server name/);
    expect(() => issueServerCert(ca, { sans: [] })).toThrow(/at least one name/);
  });

  it('refuses a CA whose key does not belong to it, or a certificate that is no CA', () => {
    const a = createCA();
    const b = createCA();
    expect(() => issueClientCert({ cert: a.cert, key: b.key }, { user: 'u' })).toThrow(/does not belong/);
    const leaf = issueClientCert(a, { user: 'u' });
    expect(() => issueClientCert(leaf, { user: 'v' })).toThrow(/not a certificate authority/);
  });

  it('isValidClusterName: DNS-1123 labels', () => {
    for (const ok of ['a', '0', 'member-1', 'a'.repeat(63)]) expect(isValidClusterName(ok)).toBe(true);
    for (const bad of ['', 'A', '-a', 'a-', 'a_b', 'a.b', 'a'.repeat(64), 'a\n']) expect(isValidClusterName(bad)).toBe(false);
  });
});

describe('subjectaltname parsing', () => {

  it('splits plain values', () => {
    expect(parseSubjectAltName('DNS:a, URI:urn:kubetunnel:agent:x, IP Address:0:0:0:0:0:0:0:1')).toEqual([
      ['DNS', 'a'],
      ['URI', 'urn:kubetunnel:agent:x'],
      ['IP Address', '0:0:0:0:0:0:0:1'],
    ]);
    expect(parseSubjectAltName(undefined)).toEqual([]);
    expect(parseSubjectAltName('')).toEqual([]);
  });

  it('keeps a quoted value with commas (and escaped quotes) as one value', () => {
    expect(parseSubjectAltName('URI:"urn:kubetunnel:agent:a,URI:urn:kubetunnel:agent:b", DNS:x')).toEqual([
      ['URI', 'urn:kubetunnel:agent:a,URI:urn:kubetunnel:agent:b'],
      ['DNS', 'x'],
    ]);
    expect(parseSubjectAltName('URI:"urn:x\\",URI:urn:kubetunnel:agent:b"')).toEqual([['URI', 'urn:x",URI:urn:kubetunnel:agent:b']]);
    expect(parseSubjectAltName('URI:"urn:kubetunnel:agent:a\\u002cURI:urn:kubetunnel:agent:b", DNS:x')).toEqual([
      ['URI', 'urn:kubetunnel:agent:a,URI:urn:kubetunnel:agent:b'],
      ['DNS', 'x'],
    ]);
  });

  it('binds a cluster only for exactly one valid agent URI', () => {
    expect(agentClusterOf(peer('DNS:a, URI:urn:kubetunnel:agent:member-1'))).toBe('member-1');
    expect(agentClusterOf(peer('URI:"urn:kubetunnel:agent:a,URI:urn:kubetunnel:agent:b"'))).toBeUndefined();
    expect(agentClusterOf(peer('URI:"urn:kubetunnel:agent:a\\u002cURI:urn:kubetunnel:agent:b"'))).toBeUndefined();
    expect(agentClusterOf(peer('URI:"urn:x\\",URI:urn:kubetunnel:agent:b"'))).toBeUndefined();
    expect(agentClusterOf(peer('URI:urn:kubetunnel:agent:a, URI:urn:kubetunnel:agent:b'))).toBeUndefined();
    expect(agentClusterOf(peer('URI:urn:kubetunnel:agent:Bad_Name'))).toBeUndefined();
    expect(agentClusterOf(peer('DNS:urn:kubetunnel:agent:a'))).toBeUndefined();
    expect(agentClusterOf(undefined)).toBeUndefined();
    expect(agentClusterOf({} as tls.PeerCertificate)).toBeUndefined(); // what Node gives without a peer certificate
  });

  it('reads a client identity; never from an agent certificate', () => {
    expect(clientIdentityOf(peer('', { CN: 'bob', O: 'g' }))).toEqual({ user: 'bob', groups: ['g'] });
    expect(clientIdentityOf(peer('', { CN: 'bob' }))).toEqual({ user: 'bob', groups: [] });
    expect(clientIdentityOf(peer('', { O: 'g' }))).toBeUndefined();
    expect(clientIdentityOf(peer('', { CN: 'bob', O: ['g', 'kubetunnel:agents'] }))).toBeUndefined();
    expect(clientIdentityOf(peer('URI:urn:kubetunnel:agent:x', { CN: 'bob' }))).toBeUndefined();
    expect(clientIdentityOf(undefined)).toBeUndefined();
  });
});

describe('certs files', () => {
  it('writes the contract file names: keys 0600, certificates 0644, directory 0700', () => {
    const dir = path.join(tempDir(), 'certs');
    const init = certsInit(dir, {});
    expect(init.files.map((f) => path.basename(f)).sort()).toEqual(['ca.crt', 'ca.key', 'client-ca.crt', 'client-ca.key', 'server.crt', 'server.key']);
    expect(init.warnings).toEqual([]);
    expect(certsAgent(dir, { cluster: 'member-2' })).toEqual({ files: [path.join(dir, 'agent-member-2.crt'), path.join(dir, 'agent-member-2.key')], warnings: [] });
    expect(certsClient(dir, { user: 'bob', groups: ['g'] }).files.map((f) => path.basename(f))).toEqual(['client-bob.crt', 'client-bob.key']);
    const mode = (f: string) => fs.statSync(path.join(dir, f)).mode & 0o777;
    expect(mode('.')).toBe(0o700);
    for (const f of ['ca', 'client-ca', 'server', 'agent-member-2', 'client-bob']) {
      expect(mode(`${f}.key`)).toBe(0o600);
      expect(mode(`${f}.crt`)).toBe(0o644);
    }
    expect(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('reuses both CAs: a second init only issues a new server certificate, signed by the hub CA', () => {
    const dir = tempDir();
    certsInit(dir, { sans: ['hub.example'] });
    const ca = loadCA(dir);
    const clientCA = fs.readFileSync(path.join(dir, 'client-ca.crt'), 'utf8');
    const before = fs.readFileSync(path.join(dir, 'server.crt'), 'utf8');
    expect(certsInit(dir, { sans: ['hub.example'] }).files.map((f) => path.basename(f)).sort()).toEqual(['server.crt', 'server.key']);
    expect(loadCA(dir)).toEqual(ca);
    expect(fs.readFileSync(path.join(dir, 'client-ca.crt'), 'utf8')).toBe(clientCA);
    const server = new X509Certificate(fs.readFileSync(path.join(dir, 'server.crt')));
    expect(server.raw.equals(new X509Certificate(before).raw)).toBe(false);
    expect(server.verify(new X509Certificate(ca.cert).publicKey)).toBe(true);
    expect(server.checkHost('hub.example')).toBe('hub.example');
  });

  it('a name the hub CA was not made for: a clear error, nothing written', () => {
    const dir = tempDir();
    certsInit(dir, { sans: ['hub.example'] });
    const before = fs.readFileSync(path.join(dir, 'server.crt'), 'utf8');
    expect(() => certsInit(dir, { sans: ['other.example'] })).toThrow(
      `the hub CA in ${dir} may sign only localhost, 127.0.0.1, clusters.kubetunnel, hub.example, not other.example`,
    );
    expect(fs.readFileSync(path.join(dir, 'server.crt'), 'utf8')).toBe(before);
  });

  it.each([
    'kubernetes',
    'kubernetes.default',
    'kubernetes.default.svc',
    'KUBERNETES.default.svc',
    'kubernetes.default.svc.cluster.local',
    'kubernetes.default.svc.',
    'kube-apiserver.kube-system.svc',
    'hub.ns.svc.cluster.local',
    '*.svc',
    '*.default.svc',
    '*.default',
    '*.ns.svc.example.org',
  ])('refuses the Kubernetes service name %s on the hub certificate, and writes nothing', (san) => {
    const dir = path.join(tempDir(), 'certs');
    expect(() => certsInit(dir, { sans: ['hub.example', san] })).toThrow(
      /is a Kubernetes service name .* kubectl trusts the hub CA for the member apiserver connection too/,
    );
    expect(fs.existsSync(dir)).toBe(false);
  });

  it('allows names that only look alike', () => {
    for (const name of ['svc', 'svc.example', 'kubernetes.example', 'my-svc.example', 'default.svc-like.example', 'kubernetes-dashboard'])
      expect(serviceNameProblem(name)).toBeUndefined();
  });

  it('the older one-CA layout keeps working, with a warning', () => {
    const dir = tempDir();
    certsInit(dir, {});
    for (const f of ['client-ca.crt', 'client-ca.key']) fs.rmSync(path.join(dir, f));
    const ca = loadCA(dir);
    const agent = certsAgent(dir, { cluster: 'member-1' });
    expect(agent.warnings).toEqual([expect.stringMatching(/^one CA signs the server, agent and client certificates here/)]);
    expect(new X509Certificate(fs.readFileSync(agent.files[0]!)).verify(new X509Certificate(ca.cert).publicKey)).toBe(true);
    expect(certsClient(dir, { user: 'bob' }).warnings).toHaveLength(1);
    const again = certsInit(dir, {});
    expect(again.files.map((f) => path.basename(f)).sort()).toEqual(['server.crt', 'server.key']);
    expect(again.warnings).toEqual([expect.stringMatching(/^one CA signs/)]);
    expect(fs.existsSync(path.join(dir, 'client-ca.crt'))).toBe(false);
  });

  it('refuses half a CA instead of replacing it', () => {
    const dir = tempDir();
    certsInit(dir, {});
    const caCert = fs.readFileSync(path.join(dir, 'ca.crt'), 'utf8');
    fs.rmSync(path.join(dir, 'ca.key'));
    expect(() => certsInit(dir, {})).toThrow(/has ca.crt but no ca.key/);
    expect(fs.readFileSync(path.join(dir, 'ca.crt'), 'utf8')).toBe(caCert);
    fs.rmSync(path.join(dir, 'client-ca.crt'));
    expect(() => certsAgent(dir, { cluster: 'member-1' })).toThrow(/has client-ca.key but no client-ca.crt/);
  });

  it('clear errors: no CA, bad cluster, user names that are no file names', () => {
    const empty = tempDir();
    expect(() => certsAgent(empty, { cluster: 'x' })).toThrow(`no CA in ${empty}: run \`kubetunnel certs init --dir ${empty}\` first`);
    expect(() => certsClient(empty, { user: 'x' })).toThrow(/no CA in/);
    const dir = tempDir();
    certsInit(dir, {});
    expect(() => certsAgent(dir, { cluster: '../x' })).toThrow(/invalid cluster name/);
    for (const user of ['../x', 'a/b', '..', 'a b', ''])
      expect(() => certsClient(dir, { user })).toThrow(/cannot be a file name/);
    expect(fs.readdirSync(dir).sort()).toEqual(['ca.crt', 'ca.key', 'client-ca.crt', 'client-ca.key', 'server.crt', 'server.key']);
  });

  it('replaceFile leaves a private file private even over an existing 0644 file', () => {
    const file = path.join(tempDir(), 'kubeconfig');
    fs.writeFileSync(file, 'old', { mode: 0o644 });
    replaceFile(file, 'secret', 0o600);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(file, 'utf8')).toBe('secret');
  });
});
