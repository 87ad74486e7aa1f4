import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, X509Certificate, type KeyObject } from 'node:crypto';
import net from 'node:net';
import forge from 'node-forge';
import { hasControlCharacter, isValidClusterName } from '../names.js';
import { algorithmIdentifier, asn1, bin, bitString, OID, pem, toDer } from './der.js';

/** A certificate and its private key, PEM. */
export interface Pem {
  cert: string;
  key: string;
}

/** The URI SAN that binds an agent certificate to its cluster. */
export const AGENT_URI_PREFIX = 'urn:kubetunnel:agent:';
/** The organization every agent certificate carries. */
export const AGENT_ORGANIZATION = 'kubetunnel:agents';

const DAY = 24 * 60 * 60 * 1000;
const UTF8 = forge.asn1.Type.UTF8;

/**
 * Keys. A certificate authority's is RSA 2048: every handshake checks the
 * peer's certificate against it, and an RSA signature verifies about four
 * times faster than an ECDSA one. A leaf's (server, agent, client) is ECDSA
 * P-256: every handshake signs with it once, about thirty times faster than
 * with RSA 2048, on both sides of a mutual-TLS handshake (openssl speed on the
 * benchmark machine: RSA 2048 signs in 662 µs, P-256 in 23 µs).
 */
function newCAKey(): KeyObject {
  return generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
}

/** A new leaf key (see newCAKey), PEM PKCS#8 as `newAgentKey` writes it. */
function newLeafKey(): { privateKey: KeyObject; pem: string } {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return { privateKey, pem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
}

/**
 * 16 random bytes, positive. The first byte is kept non-zero too: forge drops
 * leading zero bytes, which could otherwise leave a negative serial.
 */
function serial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) || 0x01;
  return b.toString('hex');
}

/** Validity from 5 minutes ago (clocks differ a little) for `validDays`. */
function validity(validDays: number): { notBefore: Date; notAfter: Date } {
  if (!Number.isFinite(validDays) || validDays <= 0) throw new Error(`validDays must be a positive number, not ${validDays}`);
  return { notBefore: new Date(Date.now() - 5 * 60 * 1000), notAfter: new Date(Date.now() + validDays * DAY) };
}

/** A certificate's fields as forge holds them, before its key and signature (see signCertificate). */
interface CertificateFields {
  subject: forge.pki.CertificateField[];
  /** The issuer's subject; the subject again for a self-signed certificate. */
  issuer: forge.pki.CertificateField[];
  extensions: object[];
  notBefore: Date;
  notAfter: Date;
}

/**
 * The certificate for `publicKey` (any key Node reads), signed by Node with
 * `signingKey` (a CA's RSA key, SHA-256) and checked with Node before it is
 * returned: its signature, and that `issuer` (itself when undefined: a CA's
 * own certificate) issued it. forge builds the to-be-signed part, but its certificate objects
 * hold RSA keys only: it is built around the signer's public key, whose place
 * `publicKey` then takes.
 */
function signCertificate(f: CertificateFields, publicKey: KeyObject, signingKey: KeyObject, issuer?: X509Certificate): string {
  const signerPublic = createPublicKey(signingKey);
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(signerPublic.export({ type: 'spki', format: 'pem' }).toString());
  cert.serialNumber = serial();
  cert.validity.notBefore = f.notBefore;
  cert.validity.notAfter = f.notAfter;
  cert.setSubject(f.subject);
  cert.setIssuer(f.issuer);
  cert.setExtensions(f.extensions);
  // forge's typings leave out getTBSCertificate, which its own sign() uses.
  cert.siginfo.algorithmOid = forge.pki.oids.sha256WithRSAEncryption!;
  const tbs = (forge.pki as unknown as { getTBSCertificate(c: forge.pki.Certificate): forge.asn1.Asn1 }).getTBSCertificate(cert);
  // TBSCertificate: [0] version, serial, signature, issuer, validity, subject, subjectPublicKeyInfo, [3] extensions
  const fields = tbs.value as forge.asn1.Asn1[];
  fields[6] = asn1.fromDer(bin(publicKey.export({ type: 'spki', format: 'der' })));
  const signature = sign('sha256', toDer(tbs), signingKey);
  const certPem = pem('CERTIFICATE', toDer(asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [tbs, algorithmIdentifier(OID.sha256WithRSA, true), bitString(signature)])));
  // What was made must verify with Node before anyone is given it.
  const made = new X509Certificate(certPem);
  if (!made.verify(signerPublic) || !made.checkIssued(issuer ?? made)) throw new Error('the issued certificate does not verify against its issuer');
  return certPem;
}

/** Subject fields as UTF8String (forge's default, PrintableString, cannot hold '@', '_' or non-ASCII; Go rejects them). */
function utf8Name(fields: Array<[name: string, value: string]>): forge.pki.CertificateField[] {
  return fields.map(([name, value]) => ({ name, value, valueTagClass: UTF8 as unknown as forge.asn1.Class }));
}

function checkText(s: string, what: string): void {
  if (s === '' || hasControlCharacter(s)) throw new Error(`${what} must be non-empty and without control characters: ${JSON.stringify(s)}`);
}

/**
 * A new certificate authority. With `permittedNames`, the CA carries a
 * critical name-constraints extension: every certificate under it is valid
 * only for those names (a DNS name and its subdomains; an IP address exactly),
 * whoever holds its key. Verifiers that matter here enforce it: Go (kubectl),
 * OpenSSL (curl, Node).
 */
export function createCA(opts: { commonName?: string; validDays?: number; permittedNames?: string[] } = {}): Pem {
  const commonName = opts.commonName ?? 'kubetunnel CA';
  checkText(commonName, 'CA common name');
  const key = newCAKey();
  const subject = utf8Name([['commonName', commonName]]);
  const cert = signCertificate(
    {
      subject,
      issuer: subject,
      extensions: [
        { name: 'basicConstraints', cA: true, critical: true },
        { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
        // forge derives it from the certificate's key: here the CA's own.
        { name: 'subjectKeyIdentifier' },
        ...(opts.permittedNames ? [nameConstraints(opts.permittedNames)] : []),
      ],
      ...validity(opts.validDays ?? 3650),
    },
    createPublicKey(key),
    key,
  );
  return { cert, key: key.export({ type: 'pkcs1', format: 'pem' }).toString() };
}

/**
 * The DNS subtree a name permits: `*.a.b` and `a.b` both become `a.b`
 * (which covers a.b and every name under it).
 */
function dnsBase(name: string): string {
  return name.replace(/^\*\./, '').toLowerCase();
}

/** RFC 5280 NameConstraints with permitted subtrees only (DNS names and single IP addresses). */
function nameConstraints(names: string[]): { id: string; critical: boolean; value: forge.asn1.Asn1 } {
  const { asn1 } = forge;
  if (names.length === 0) throw new Error('a name-constrained CA needs at least one permitted name');
  const subtrees = [...new Set(names.map((n) => (net.isIP(n) ? n : dnsBase(n))))].map((n) => {
    const base = net.isIP(n)
      ? asn1.create(asn1.Class.CONTEXT_SPECIFIC, 7, false, ipBytes(n) + '\xff'.repeat(net.isIPv4(n) ? 4 : 16))
      : asn1.create(asn1.Class.CONTEXT_SPECIFIC, 2, false, altName(n).value);
    return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [base]);
  });
  return {
    id: '2.5.29.30',
    critical: true,
    value: asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, subtrees)]),
  };
}

/**
 * The names a CA permits (its name constraints), or undefined when it has
 * none (it may sign any name). IP addresses come back in Node's notation.
 */
export function permittedNamesOf(caPem: string): string[] | undefined {
  const cert = forge.pki.certificateFromPem(caPem);
  const ext = cert.getExtension('nameConstraints') as { permittedSubtrees?: Array<{ type: number; value: string }> } | null;
  if (!ext?.permittedSubtrees || ext.permittedSubtrees.length === 0) return undefined;
  return ext.permittedSubtrees.map((t) => {
    if (t.type !== 7) return t.value;
    const half = t.value.slice(0, t.value.length / 2);
    const bytes = [...half].map((c) => c.charCodeAt(0));
    if (bytes.length === 4) return bytes.join('.');
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
    return groups.join(':');
  });
}

/** Whether `name` (a DNS name, possibly *.wildcard, or an IP address) falls under one of `permitted`. */
export function namePermitted(name: string, permitted: string[]): boolean {
  if (net.isIP(name)) return permitted.some((p) => net.isIP(p) && ipBytes(p) === ipBytes(name));
  const n = dnsBase(name);
  return permitted.some((p) => !net.isIP(p) && (n === p.toLowerCase() || n.endsWith('.' + p.toLowerCase())));
}

/** A CA read to sign with: Node's key, forge's certificate (for its subject and key identifier); checked with Node first (a CA, an RSA key, and the key belongs to it). */
interface Signer {
  key: KeyObject;
  x509: X509Certificate;
  cert: forge.pki.Certificate;
}

function loadSigner(ca: Pem): Signer {
  let x509: X509Certificate;
  let key: KeyObject;
  try {
    x509 = new X509Certificate(ca.cert);
    key = createPrivateKey(ca.key);
  } catch (err) {
    throw new Error(`cannot read the CA certificate or key: ${(err as Error).message}`);
  }
  if (!x509.ca) throw new Error('the CA certificate is not a certificate authority (basicConstraints CA:FALSE)');
  if (!x509.checkPrivateKey(key)) throw new Error('the CA key does not belong to the CA certificate');
  if (key.asymmetricKeyType !== 'rsa') throw new Error(`the CA key is ${key.asymmetricKeyType ?? 'an unknown'} key; kubetunnel signs with RSA keys only`);
  return { key, x509, cert: forge.pki.certificateFromPem(ca.cert) };
}

/**
 * A leaf certificate for `publicKey` signed by `ca`: its subject, the CA as
 * issuer (byte for byte), an authority key identifier, not a CA, then
 * `extensions`.
 */
export function issueForKey(
  ca: Pem,
  o: { publicKey: KeyObject; subject: Array<[name: string, value: string]>; extensions: object[]; notBefore: Date; notAfter: Date },
): string {
  const signer = loadSigner(ca);
  const caSki = signer.cert.getExtension('subjectKeyIdentifier') as { subjectKeyIdentifier?: string } | null;
  return signCertificate(
    {
      subject: utf8Name(o.subject),
      // forge reads name values as raw bytes but encodes UTF8String values itself: decode them
      // first, so the issuer is byte for byte the CA's subject.
      issuer: signer.cert.subject.attributes.map((a) =>
        (a.valueTagClass as unknown) === UTF8 && typeof a.value === 'string' ? { ...a, value: forge.util.decodeUtf8(a.value) } : a,
      ),
      extensions: [
        { name: 'basicConstraints', cA: false, critical: true },
        // Signatures only: ECDHE needs no key encipherment, and an ECDSA key cannot do it.
        { name: 'keyUsage', digitalSignature: true, critical: true },
        {
          name: 'authorityKeyIdentifier',
          keyIdentifier: caSki?.subjectKeyIdentifier ? forge.util.hexToBytes(caSki.subjectKeyIdentifier) : signer.cert.generateSubjectKeyIdentifier().getBytes(),
        },
        ...o.extensions,
      ],
      notBefore: o.notBefore,
      notAfter: o.notAfter,
    },
    o.publicKey,
    signer.key,
    signer.x509,
  );
}

/** A leaf certificate with a new key of its own (newLeafKey). */
function issue(ca: Pem, subject: Array<[name: string, value: string]>, extensions: object[], validDays: number): Pem {
  const key = newLeafKey();
  return { cert: issueForKey(ca, { publicKey: createPublicKey(key.privateKey), subject, extensions, ...validity(validDays) }), key: key.pem };
}

/** The 4 or 16 bytes of an IP address (forge's own parser rejects forms such as ::ffff:10.0.0.1). */
function ipBytes(ip: string): string {
  if (net.isIPv4(ip)) return String.fromCharCode(...ip.split('.').map(Number));
  // IPv6: write a dotted IPv4 tail as two groups, then expand '::'.
  const s = ip.replace(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/, (_, a, b, c, d) => `${((+a << 8) | +b).toString(16)}:${((+c << 8) | +d).toString(16)}`);
  const [head, tail] = s.split('::') as [string, string | undefined];
  const groups = (part: string | undefined) => (part ? part.split(':') : []);
  const h = groups(head);
  const t = groups(tail);
  const all = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return all.map((g) => String.fromCharCode(parseInt(g, 16) >> 8, parseInt(g, 16) & 0xff)).join('');
}

const DNS_NAME = /^(\*\.)?([A-Za-z0-9_]([-A-Za-z0-9_]*[A-Za-z0-9_])?\.)*[A-Za-z0-9_]([-A-Za-z0-9_]*[A-Za-z0-9_])?$/;

function altName(san: string): { type: number; value: string } {
  if (net.isIPv4(san) || (net.isIPv6(san) && !san.includes('%'))) return { type: 7, value: ipBytes(san) };
  if (san.length > 253 || !DNS_NAME.test(san))
    throw new Error(`invalid server name ${JSON.stringify(san)}: want a DNS name (optionally *.name) or an IP address without brackets`);
  return { type: 2, value: san };
}

/** A serving certificate; each SAN that is an IP address (v4 or v6) becomes an IP SAN, the rest DNS SANs. */
export function issueServerCert(ca: Pem, opts: { sans: string[]; commonName?: string; validDays?: number }): Pem {
  if (opts.sans.length === 0) throw new Error('a server certificate needs at least one name');
  const altNames = [...new Set(opts.sans)].map(altName);
  const commonName = opts.commonName ?? opts.sans[0]!;
  checkText(commonName, 'common name');
  return issue(
    ca,
    [['commonName', commonName]],
    [
      // Serving only: a server certificate never authenticates as a client.
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames },
    ],
    opts.validDays ?? 825,
  );
}

/** An agent certificate bound to one cluster (URI SAN urn:kubetunnel:agent:<cluster>), client use only. */
export function issueAgentCert(ca: Pem, opts: { cluster: string; validDays?: number }): Pem {
  if (!isValidClusterName(opts.cluster))
    throw new Error(`invalid cluster name ${JSON.stringify(opts.cluster)}: want a DNS label (a-z, 0-9, '-'; at most 63; alphanumeric at both ends)`);
  return issue(
    ca,
    [
      ['commonName', `kubetunnel-agent:${opts.cluster}`],
      ['organizationName', AGENT_ORGANIZATION],
    ],
    [
      { name: 'extKeyUsage', clientAuth: true },
      { name: 'subjectAltName', altNames: [{ type: 6, value: AGENT_URI_PREFIX + opts.cluster }] },
    ],
    opts.validDays ?? 365,
  );
}

/** A client certificate: user = CN, one O per group, client use only. */
export function issueClientCert(ca: Pem, opts: { user: string; groups?: string[]; validDays?: number }): Pem {
  const groups = opts.groups ?? [];
  checkText(opts.user, 'user name');
  for (const g of groups) checkText(g, 'group name');
  if (groups.includes(AGENT_ORGANIZATION)) throw new Error(`group ${AGENT_ORGANIZATION} is reserved for agents`);
  return issue(
    ca,
    [['commonName', opts.user], ...groups.map((g): [string, string] => ['organizationName', g])],
    [{ name: 'extKeyUsage', clientAuth: true }],
    opts.validDays ?? 365,
  );
}
