import forge from 'node-forge';

/**
 * DER pieces built with forge's ASN.1 module, for what forge's own
 * certificate objects cannot hold (they carry RSA keys only; kubetunnel's
 * leaf keys are ECDSA P-256). Node makes the keys and does every signature.
 */

export const { asn1 } = forge;

export const OID = {
  ecdsaWithSHA256: '1.2.840.10045.4.3.2',
  sha256WithRSA: '1.2.840.113549.1.1.11',
};

/** A binary string (forge's byte form) of a buffer, and back. */
export const bin = (b: Buffer) => b.toString('binary');
export const buf = (s: string) => Buffer.from(s, 'binary');

export function algorithmIdentifier(oid: string, nullParams: boolean): forge.asn1.Asn1 {
  const parts = [asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(oid).getBytes())];
  if (nullParams) parts.push(asn1.create(asn1.Class.UNIVERSAL, asn1.Type.NULL, false, ''));
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, parts);
}

export function bitString(data: Buffer): forge.asn1.Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BITSTRING, false, '\x00' + bin(data));
}

export function toDer(node: forge.asn1.Asn1): Buffer {
  return buf(asn1.toDer(node).getBytes());
}

/** PEM of DER bytes, 64 characters a line. */
export function pem(label: string, der: Buffer): string {
  const b64 = der.toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}
