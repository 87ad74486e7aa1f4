import { createHash, createPrivateKey, createPublicKey, randomBytes, sign, verify, X509Certificate, type KeyObject } from 'node:crypto';
import { isValidClusterName } from '../names.js';
import type { Reason } from '../errors.js';

/**
 * Join tokens: a compact JWS (header.payload.signature, each base64url) whose
 * payload is an expiring claim for one cluster, signed with the client CA's
 * key (RS256 for an RSA key, ES256 for a P-256 key). Every server replica
 * that trusts the client CA can check one without shared state; what it
 * cannot know from the token alone (revocations, uses so far) it keeps
 * itself.
 */

/** The JWS `typ` of a join token: nothing else signed with the client CA key passes for one. */
export const JOIN_TOKEN_TYPE = 'kubetunnel-join';
/** Longest join token a server reads. */
export const MAX_JOIN_TOKEN_LENGTH = 4096;

export interface JoinClaim {
  /** The cluster the token lets an agent join as. */
  cluster: string;
  /** Token id (hex): what a revocation names, and what logs show instead of the token. */
  id: string;
  /** Issued at and expires at, in seconds since the epoch (JWT iat and exp). */
  issuedAt: number;
  expiresAt: number;
  /** How many agents may join with it on each server replica; undefined: any number until it expires. */
  uses?: number;
}

const B64URL = /^[A-Za-z0-9_-]+$/;

function b64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

function algorithmFor(key: KeyObject): 'RS256' | 'ES256' {
  if (key.asymmetricKeyType === 'rsa') return 'RS256';
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'ES256';
  throw new Error(`join tokens are signed with an RSA or P-256 key, not ${key.asymmetricKeyType ?? 'this'} key`);
}

/** Signs a join claim with the client CA key (PEM). */
export function createJoinToken(caKeyPem: string, opts: { cluster: string; ttlMs: number; uses?: number; now?: number }): { token: string; claim: JoinClaim } {
  if (!isValidClusterName(opts.cluster)) throw new Error(`invalid cluster name ${JSON.stringify(opts.cluster)}: want a DNS label`);
  if (!Number.isFinite(opts.ttlMs) || opts.ttlMs < 1000) throw new Error('a join token lives at least one second');
  if (opts.uses !== undefined && (!Number.isInteger(opts.uses) || opts.uses < 1)) throw new Error('--uses wants a whole number of at least 1');
  const key = createPrivateKey(caKeyPem);
  const alg = algorithmFor(key);
  const now = opts.now ?? Date.now();
  const claim: JoinClaim = {
    cluster: opts.cluster,
    id: randomBytes(8).toString('hex'),
    issuedAt: Math.floor(now / 1000),
    expiresAt: Math.floor((now + opts.ttlMs) / 1000),
    ...(opts.uses !== undefined ? { uses: opts.uses } : {}),
  };
  const header = b64url(JSON.stringify({ alg, typ: JOIN_TOKEN_TYPE }));
  const payload = b64url(
    JSON.stringify({ cluster: claim.cluster, jti: claim.id, iat: claim.issuedAt, exp: claim.expiresAt, ...(claim.uses !== undefined ? { uses: claim.uses } : {}) }),
  );
  const input = `${header}.${payload}`;
  const signature = sign(alg === 'RS256' ? 'sha256' : 'sha256', Buffer.from(input), alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key);
  return { token: `${input}.${b64url(signature)}`, claim };
}

export type TokenCheck = { ok: true; claim: JoinClaim } | { ok: false; reason: Reason; message: string };

function parseJson(part: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Checks a token's form and signature against the client CA public keys
 * (one of them must have signed it), then its expiry. Revocation, uses and
 * the cluster asked for are the caller's to check against the claim.
 */
export function verifyJoinToken(token: string, caKeys: KeyObject[], now = Date.now()): TokenCheck {
  const invalid = (message: string): TokenCheck => ({ ok: false, reason: 'TOKEN_INVALID', message });
  if (typeof token !== 'string' || token.length === 0 || token.length > MAX_JOIN_TOKEN_LENGTH) return invalid('join token is missing or too long');
  const parts = token.split('.');
  if (parts.length !== 3 || !parts.every((p) => B64URL.test(p))) return invalid('join token is not of the form header.payload.signature');
  const [h, p, s] = parts as [string, string, string];
  const header = parseJson(h);
  if (!header || header.typ !== JOIN_TOKEN_TYPE || (header.alg !== 'RS256' && header.alg !== 'ES256')) return invalid('join token header is not a kubetunnel join token');
  const signature = Buffer.from(s, 'base64url');
  const input = Buffer.from(`${h}.${p}`);
  const signed = caKeys.some((key) => {
    let alg: string;
    try {
      alg = algorithmFor(key);
    } catch {
      return false;
    }
    // The key decides the algorithm; a header naming another one is refused.
    if (alg !== header.alg) return false;
    try {
      return verify('sha256', input, alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key, signature);
    } catch {
      return false;
    }
  });
  if (!signed) return invalid("join token signature does not verify: altered, or not signed by this hub's client CA");
  const body = parseJson(p);
  const cluster = body?.cluster;
  const id = body?.jti;
  const iat = body?.iat;
  const exp = body?.exp;
  const uses = body?.uses;
  if (
    typeof cluster !== 'string' ||
    !isValidClusterName(cluster) ||
    typeof id !== 'string' ||
    !/^[0-9a-f]{1,64}$/.test(id) ||
    typeof iat !== 'number' ||
    typeof exp !== 'number' ||
    (uses !== undefined && (typeof uses !== 'number' || !Number.isInteger(uses) || uses < 1))
  )
    return invalid('join token claim is malformed');
  const claim: JoinClaim = { cluster, id, issuedAt: iat, expiresAt: exp, ...(uses !== undefined ? { uses: uses as number } : {}) };
  if (exp * 1000 <= now)
    return { ok: false, reason: 'TOKEN_EXPIRED', message: `join token ${id} expired at ${new Date(exp * 1000).toISOString()}` };
  return { ok: true, claim };
}

/** The token id of a join token, without checking it (for messages; never the token itself). */
export function joinTokenId(token: string): string | undefined {
  const p = token.split('.')[1];
  const id = p && B64URL.test(p) ? parseJson(p)?.jti : undefined;
  return typeof id === 'string' && /^[0-9a-f]{1,64}$/.test(id) ? id : undefined;
}

/** `sha256:HEX` of a certificate's SubjectPublicKeyInfo (kubeadm's --discovery-token-ca-cert-hash). */
export function caCertHash(cert: X509Certificate | string): string {
  const x509 = typeof cert === 'string' ? new X509Certificate(cert) : cert;
  return 'sha256:' + createHash('sha256').update(x509.publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
}

/** A --ca-cert-hash value normalized (sha256: and 64 lower-case hex digits), or undefined when it is not one. */
export function parseCaCertHash(text: string): string | undefined {
  const m = /^sha256:([0-9a-fA-F]{64})$/.exec(text.trim());
  return m ? `sha256:${m[1]!.toLowerCase()}` : undefined;
}

/** The public keys of the certificates in a PEM bundle (the client CAs a token may be signed by). */
export function publicKeysOf(pemBundle: string): KeyObject[] {
  const out: KeyObject[] = [];
  for (const m of pemBundle.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)) {
    try {
      out.push(new X509Certificate(m[0]).publicKey);
    } catch {
      // not a certificate
    }
  }
  return out;
}

/** The public key of a private key (PEM). */
export function publicKeyOfPrivate(keyPem: string): KeyObject {
  return createPublicKey(createPrivateKey(keyPem));
}
