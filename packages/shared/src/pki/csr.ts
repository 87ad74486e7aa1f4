import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import type forge from 'node-forge';
import { isValidClusterName } from '../names.js';
import { algorithmIdentifier, asn1, bin, bitString, buf, OID, pem, toDer } from './der.js';
import { AGENT_ORGANIZATION, AGENT_URI_PREFIX, issueForKey, type Pem } from './issue.js';

/**
 * Certificate requests (PKCS#10) for keys an agent makes itself, and agent
 * certificates issued for them. Node makes the keys and does every signature
 * and check; forge's ASN.1 module builds and reads the DER (der.ts).
 */

/** The URI SAN naming the join token an agent certificate came from (renewals keep it). */
export const JOIN_URI_PREFIX = 'urn:kubetunnel:join:';
/** The OPEN target of a certificate renewal, which an agent sends the server over its tunnel. */
export const RENEW_TARGET = 'kubetunnel:renew-certificate';
/** Largest certificate request a server reads. */
export const MAX_CSR_BYTES = 8192;
/** How far before its issuing an agent certificate's validity starts (replicas' clocks differ a little). */
export const AGENT_CERT_BACKDATE_MS = 60_000;

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
  return pem('CERTIFICATE REQUEST', toDer(csr));
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
 * from, valid for `validMs`, signed by the client CA.
 */
export function issueAgentCertForKey(ca: Pem, opts: { publicKey: KeyObject; cluster: string; joinId?: string; validMs: number; now?: number }): string {
  if (!isValidClusterName(opts.cluster)) throw new Error(`invalid cluster name ${JSON.stringify(opts.cluster)}`);
  if (opts.joinId !== undefined && !/^[0-9a-f]{1,64}$/.test(opts.joinId)) throw new Error('invalid join token id');
  if (!Number.isFinite(opts.validMs) || opts.validMs < 1000) throw new Error('an agent certificate lives at least one second');
  const now = opts.now ?? Date.now();
  const uris = [{ type: 6, value: AGENT_URI_PREFIX + opts.cluster }, ...(opts.joinId ? [{ type: 6, value: JOIN_URI_PREFIX + opts.joinId }] : [])];
  return issueForKey(ca, {
    publicKey: opts.publicKey,
    subject: [
      ['commonName', `kubetunnel-agent:${opts.cluster}`],
      ['organizationName', AGENT_ORGANIZATION],
    ],
    extensions: [
      { name: 'extKeyUsage', clientAuth: true },
      { name: 'subjectAltName', altNames: uris },
    ],
    notBefore: new Date(now - AGENT_CERT_BACKDATE_MS),
    notAfter: new Date(now + opts.validMs),
  });
}

/** The join token id an agent certificate names (its urn:kubetunnel:join: URI SAN), if any. */
export function joinIdOf(subjectAltName: string | undefined): string | undefined {
  const m = /(?:^|, )URI:urn:kubetunnel:join:([0-9a-f]{1,64})(?:,|$)/.exec(subjectAltName ?? '');
  return m?.[1];
}
