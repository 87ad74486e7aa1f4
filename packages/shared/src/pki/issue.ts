import { generateKeyPairSync, randomBytes } from 'node:crypto';
import net from 'node:net';
import forge from 'node-forge';
import { isValidClusterName } from '../names.js';

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

/** Keys come from Node's native generator; forge only builds and signs the certificate. */
function newKeyPair(): { publicKey: forge.pki.PublicKey; privateKey: forge.pki.rsa.PrivateKey; pem: string } {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const pem = privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
  const forgeKey = forge.pki.privateKeyFromPem(pem) as forge.pki.rsa.PrivateKey;
  return { privateKey: forgeKey, publicKey: forge.pki.setRsaPublicKey(forgeKey.n, forgeKey.e), pem };
}

function serial(): string {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f; // positive
  return b.toString('hex');
}

function baseCert(publicKey: forge.pki.PublicKey, validDays: number): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = publicKey;
  cert.serialNumber = serial();
  cert.validity.notBefore = new Date(Date.now() - 5 * 60 * 1000);
  cert.validity.notAfter = new Date(Date.now() + validDays * DAY);
  return cert;
}

function sign(cert: forge.pki.Certificate, key: forge.pki.rsa.PrivateKey): string {
  cert.sign(key, forge.md.sha256.create());
  return forge.pki.certificateToPem(cert);
}

function noControlChars(s: string, what: string): void {
  if (s === '' || /[\u0000-\u001f\u007f]/.test(s)) throw new Error(`${what} must be non-empty and without control characters`);
}

/** A new certificate authority. */
export function createCA(opts: { commonName?: string; validDays?: number } = {}): Pem {
  const keys = newKeyPair();
  const cert = baseCert(keys.publicKey, opts.validDays ?? 3650);
  const subject = [{ name: 'commonName', value: opts.commonName ?? 'kubetunnel CA' }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  return { cert: sign(cert, keys.privateKey), key: keys.pem };
}

function issue(
  ca: Pem,
  subject: forge.pki.CertificateField[],
  extensions: object[],
  validDays: number,
): Pem {
  const caCert = forge.pki.certificateFromPem(ca.cert);
  const caKey = forge.pki.privateKeyFromPem(ca.key) as forge.pki.rsa.PrivateKey;
  const keys = newKeyPair();
  const cert = baseCert(keys.publicKey, validDays);
  cert.setSubject(subject);
  cert.setIssuer(caCert.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'authorityKeyIdentifier', keyIdentifier: caCert.generateSubjectKeyIdentifier().getBytes() },
    ...extensions,
  ]);
  return { cert: sign(cert, caKey), key: keys.pem };
}

/** A serving certificate; each SAN that is an IP address becomes an IP SAN, the rest DNS SANs. */
export function issueServerCert(ca: Pem, opts: { sans: string[]; commonName?: string; validDays?: number }): Pem {
  if (opts.sans.length === 0) throw new Error('a server certificate needs at least one name');
  const altNames = [...new Set(opts.sans)].map((san) => {
    noControlChars(san, 'subject alternative name');
    return net.isIP(san) ? { type: 7, ip: san } : { type: 2, value: san };
  });
  return issue(
    ca,
    [{ name: 'commonName', value: opts.commonName ?? opts.sans[0]! }],
    [
      { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
      { name: 'subjectAltName', altNames },
    ],
    opts.validDays ?? 825,
  );
}

/** An agent certificate bound to one cluster (URI SAN urn:kubetunnel:agent:<cluster>), client use only. */
export function issueAgentCert(ca: Pem, opts: { cluster: string; validDays?: number }): Pem {
  if (!isValidClusterName(opts.cluster))
    throw new Error(`invalid cluster name ${JSON.stringify(opts.cluster)}: want a DNS label (a-z, 0-9, -; at most 63)`);
  return issue(
    ca,
    [
      { name: 'commonName', value: `kubetunnel-agent:${opts.cluster}` },
      { name: 'organizationName', value: AGENT_ORGANIZATION },
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
  noControlChars(opts.user, 'user name');
  for (const g of opts.groups ?? []) noControlChars(g, 'group name');
  if ((opts.groups ?? []).includes(AGENT_ORGANIZATION)) throw new Error(`group ${AGENT_ORGANIZATION} is reserved for agents`);
  return issue(
    ca,
    [{ name: 'commonName', value: opts.user }, ...(opts.groups ?? []).map((g) => ({ name: 'organizationName', value: g }))],
    [{ name: 'extKeyUsage', clientAuth: true }],
    opts.validDays ?? 365,
  );
}
