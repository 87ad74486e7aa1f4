import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, verify, X509Certificate, type KeyObject } from 'node:crypto';
import forge from 'node-forge';
import { isValidClusterName } from '../names.js';
import { AGENT_ORGANIZATION, AGENT_URI_PREFIX, type Pem } from './issue.js';

/**
 * Certificate requests (PKCS#10) for keys an agent makes itself, and agent
 * certificates issued for them. Node makes the keys and does every signature
 * and check; forge's ASN.1 module builds and reads the DER (forge's own
 * certificate objects hold RSA keys only, and agents use ECDSA P-256).
 */

const { asn1 } = forge;
/** The URI SAN naming the join token an agent certificate came from (renewals keep it). */
export const JOIN_URI_PREFIX = 'urn:kubetunnel:join:';
/** The OPEN target of a certificate renewal, which an agent sends the server over its tunnel. */
export const RENEW_TARGET = 'kubetunnel:renew-certificate';
/** Largest certificate request a server reads. */
export const MAX_CSR_BYTES = 8192;
/** How far before its issuing an agent certificate's validity starts (replicas' clocks differ a little). */
export const AGENT_CERT_BACKDATE_MS = 60_000;

const OID = {
  ecdsaWithSHA256: '1.2.840.10045.4.3.2',
  sha256WithRSA: '1.2.840.113549.1.1.11',
};

/** A binary string (forge's byte form) of a buffer, and back. */
const bin = (b: Buffer) => b.toString('binary');
const buf = (s: string) => Buffer.from(s, 'binary');

function algorithmIdentifier(oid: string, nullParams: boolean): forge.asn1.Asn1 {
  const parts = [asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(oid).getBytes())];
  if (nullParams) parts.push(asn1.create(asn1.Class.UNIVERSAL, asn1.Type.NULL, false, ''));
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, parts);
}

function bitString(data: Buffer): forge.asn1.Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BITSTRING, false, '\x00' + bin(data));
}

function toDer(node: forge.asn1.Asn1): Buffer {
  return buf(asn1.toDer(node).getBytes());
}

/** A new ECDSA P-256 key (PEM, PKCS#8). */
export function newAgentKey(): string {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
}

/** A PKCS#10 request for `keyPem` (ECDSA P-256), with an empty subject: the server decides the names. */
export function createCsr(keyPem: string): string {
  const key = createPrivateKey(keyPem);
  if (key.asymmetricKeyType !== 'ec') throw new Error('agent keys are ECDSA P-256');
  const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
  const info = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, asn1.integerToDer(0).getBytes()),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, []),
    asn1.fromDer(bin(spki)),
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, []),
  ]);
  const infoDer = toDer(info);
  const signature = sign('sha256', infoDer, key);
  const csr = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [info, algorithmIdentifier(OID.ecdsaWithSHA256, false), bitString(signature)]);
  const b64 = toDer(csr).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN CERTIFICATE REQUEST-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END CERTIFICATE REQUEST-----\n`;
}

/**
 * The public key of a certificate request, once its form and its signature
 * (proof that the requester holds the key) check out; an Error saying why not
 * otherwise. Accepted keys: ECDSA P-256 (what agents make) and RSA of 2048
 * bits or more.
 */
export function publicKeyOfCsr(pem: string): KeyObject {
  if (pem.length > MAX_CSR_BYTES) throw new Error(`certificate request larger than ${MAX_CSR_BYTES} bytes`);
  const m = /^-----BEGIN CERTIFICATE REQUEST-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END CERTIFICATE REQUEST-----\s*$/.exec(pem.trim() + '\n');
  if (!m) throw new Error('not a PEM certificate request');
  let csr: forge.asn1.Asn1;
  try {
    // Bit strings kept whole (forge would otherwise try to read a signature as ASN.1).
    const fromDer = asn1.fromDer as unknown as (bytes: string, options: { strict: boolean; decodeBitStrings: boolean }) => forge.asn1.Asn1;
    csr = fromDer(bin(Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64')), { strict: true, decodeBitStrings: false });
  } catch {
    throw new Error('certificate request is not valid DER');
  }
  const top = csr.value as forge.asn1.Asn1[];
  if (csr.type !== asn1.Type.SEQUENCE || !Array.isArray(top) || top.length !== 3) throw new Error('certificate request is not a PKCS#10 request');
  const [info, alg, sig] = top as [forge.asn1.Asn1, forge.asn1.Asn1, forge.asn1.Asn1];
  const infoParts = info.value as forge.asn1.Asn1[];
  if (info.type !== asn1.Type.SEQUENCE || !Array.isArray(infoParts) || infoParts.length < 3) throw new Error('certificate request info is malformed');
  const algParts = alg.value as forge.asn1.Asn1[];
  const oid = Array.isArray(algParts) && algParts[0]?.type === asn1.Type.OID ? asn1.derToOid(algParts[0].value as string) : '';
  if (sig.type !== asn1.Type.BITSTRING || typeof sig.value !== 'string' || sig.value.charCodeAt(0) !== 0) throw new Error('certificate request signature is malformed');
  let key: KeyObject;
  try {
    key = createPublicKey({ key: toDer(infoParts[2]!), format: 'der', type: 'spki' });
  } catch {
    throw new Error('certificate request public key is unreadable');
  }
  const ec = key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1';
  const rsa = key.asymmetricKeyType === 'rsa' && (key.asymmetricKeyDetails?.modulusLength ?? 0) >= 2048;
  if (!ec && !rsa) throw new Error('certificate request key must be ECDSA P-256 or RSA of at least 2048 bits');
  if ((ec && oid !== OID.ecdsaWithSHA256) || (rsa && oid !== OID.sha256WithRSA)) throw new Error('certificate request signature algorithm does not fit its key');
  let ok = false;
  try {
    ok = verify('sha256', toDer(info), key, buf(sig.value.slice(1)));
  } catch {
    ok = false;
  }
  if (!ok) throw new Error('certificate request signature does not verify');
  return key;
}

/**
 * An agent certificate for a key the agent holds (its request's public key),
 * bound to `cluster` as `certs agent` binds one, naming the join token it came
 * from, valid for `validMs`, signed by the client CA (RSA).
 */
export function issueAgentCertForKey(ca: Pem, opts: { publicKey: KeyObject; cluster: string; joinId?: string; validMs: number; now?: number }): string {
  if (!isValidClusterName(opts.cluster)) throw new Error(`invalid cluster name ${JSON.stringify(opts.cluster)}`);
  if (opts.joinId !== undefined && !/^[0-9a-f]{1,64}$/.test(opts.joinId)) throw new Error('invalid join token id');
  if (!Number.isFinite(opts.validMs) || opts.validMs < 1000) throw new Error('an agent certificate lives at least one second');
  const caCert = new X509Certificate(ca.cert);
  const caKey = createPrivateKey(ca.key);
  if (!caCert.ca) throw new Error('the client CA certificate is not a certificate authority');
  if (!caCert.checkPrivateKey(caKey)) throw new Error('the client CA key does not belong to the client CA certificate');
  if (caKey.asymmetricKeyType !== 'rsa') throw new Error('the client CA key must be an RSA key');
  const signer = forge.pki.certificateFromPem(ca.cert);
  const now = opts.now ?? Date.now();
  // forge builds the to-be-signed part around a stand-in RSA key (the CA's
  // own public key); the agent's key then takes its place.
  const cert = forge.pki.createCertificate();
  cert.publicKey = signer.publicKey;
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) || 0x01;
  cert.serialNumber = serial.toString('hex');
  cert.validity.notBefore = new Date(now - AGENT_CERT_BACKDATE_MS);
  cert.validity.notAfter = new Date(now + opts.validMs);
  const UTF8 = asn1.Type.UTF8 as unknown as forge.asn1.Class;
  cert.setSubject([
    { name: 'commonName', value: `kubetunnel-agent:${opts.cluster}`, valueTagClass: UTF8 },
    { name: 'organizationName', value: AGENT_ORGANIZATION, valueTagClass: UTF8 },
  ]);
  cert.setIssuer(
    signer.subject.attributes.map((a) =>
      (a.valueTagClass as unknown) === UTF8 && typeof a.value === 'string' ? { ...a, value: forge.util.decodeUtf8(a.value) } : a,
    ),
  );
  const caSki = signer.getExtension('subjectKeyIdentifier') as { subjectKeyIdentifier?: string } | null;
  const uris = [{ type: 6, value: AGENT_URI_PREFIX + opts.cluster }, ...(opts.joinId ? [{ type: 6, value: JOIN_URI_PREFIX + opts.joinId }] : [])];
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, critical: true },
    { name: 'authorityKeyIdentifier', keyIdentifier: caSki?.subjectKeyIdentifier ? forge.util.hexToBytes(caSki.subjectKeyIdentifier) : signer.generateSubjectKeyIdentifier().getBytes() },
    { name: 'extKeyUsage', clientAuth: true },
    { name: 'subjectAltName', altNames: uris },
  ]);
  // forge's typings leave out getTBSCertificate, which its own sign() uses.
  cert.siginfo.algorithmOid = forge.pki.oids.sha256WithRSAEncryption!;
  const tbs = (forge.pki as unknown as { getTBSCertificate(c: forge.pki.Certificate): forge.asn1.Asn1 }).getTBSCertificate(cert);
  // TBSCertificate: [0] version, serial, signature, issuer, validity, subject, subjectPublicKeyInfo, [3] extensions
  const fields = tbs.value as forge.asn1.Asn1[];
  fields[6] = asn1.fromDer(bin(opts.publicKey.export({ type: 'spki', format: 'der' })));
  const tbsDer = toDer(tbs);
  const signature = sign('sha256', tbsDer, caKey);
  const der = toDer(asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [tbs, algorithmIdentifier(OID.sha256WithRSA, true), bitString(signature)]));
  const pem = `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END CERTIFICATE-----\n`;
  // What was made must verify with Node before anyone is given it.
  const made = new X509Certificate(pem);
  if (!made.verify(caCert.publicKey) || !made.checkIssued(caCert)) throw new Error('the issued certificate does not verify against the client CA');
  return pem;
}

/** The join token id an agent certificate names (its urn:kubetunnel:join: URI SAN), if any. */
export function joinIdOf(subjectAltName: string | undefined): string | undefined {
  const m = /(?:^|, )URI:urn:kubetunnel:join:([0-9a-f]{1,64})(?:,|$)/.exec(subjectAltName ?? '');
  return m?.[1];
}
