import { createHash } from 'node:crypto';
import { createSecureContext, type SecureContext, type SecureContextOptions, type TlsOptions } from 'node:tls';

/**
 * TLS 1.2 suites the servers accept: ECDHE key exchange (forward secrecy)
 * with an AEAD cipher, strongest first. TLS 1.3 suites are all of that kind
 * and stay at Node's defaults; TLS 1.3 is chosen whenever the client offers it.
 */
export const TLS12_CIPHERS = [
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
] as const;

/** The TLS 1.3 suites (OpenSSL names), listed so the cipher string names every suite allowed. */
export const TLS13_CIPHERS = ['TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256', 'TLS_AES_128_GCM_SHA256'] as const;

/**
 * The TLS policy of every kubetunnel listener (client frontend, agent
 * gateway): TLS 1.2 and up, forward-secret AEAD suites only, the server's
 * order of preference. Spread it into the options of `https.createServer`
 * or `tls.createServer`.
 */
export const SERVER_TLS_POLICY: Readonly<Pick<TlsOptions & SecureContextOptions, 'minVersion' | 'ciphers' | 'honorCipherOrder'>> = Object.freeze({
  minVersion: 'TLSv1.2',
  ciphers: [...TLS13_CIPHERS, ...TLS12_CIPHERS].join(':'),
  honorCipherOrder: true,
});

/** PEM material of a client's TLS context: the CA it trusts, and its own certificate and key if it has one. */
export interface ClientPem {
  ca?: string;
  cert?: string;
  key?: string;
}

/** Contexts made by clientContext, newest last; a few at most (see there). */
const clientContexts = new Map<string, SecureContext>();
const MAX_CLIENT_CONTEXTS = 8;

/**
 * The TLS context for `pem`, made once per process for the same CA,
 * certificate and key: parsing a key and a CA costs milliseconds, and every
 * tunnel or apiserver client of the process holding the same material (many
 * agents in one process, a renewal's new pair used by each later dial) shares
 * one. The material is known by a digest of it, not kept as a map key; the
 * few most recent sets are kept.
 */
export function clientContext(pem: ClientPem): SecureContext {
  const digest = createHash('sha256');
  for (const part of [pem.ca, pem.cert, pem.key]) digest.update(`${part?.length ?? -1}:`).update(part ?? '');
  const id = digest.digest('base64');
  let context = clientContexts.get(id);
  if (context) {
    clientContexts.delete(id);
  } else {
    context = createSecureContext({ ...(pem.ca ? { ca: pem.ca } : {}), ...(pem.cert ? { cert: pem.cert } : {}), ...(pem.key ? { key: pem.key } : {}) });
    if (clientContexts.size >= MAX_CLIENT_CONTEXTS) clientContexts.delete(clientContexts.keys().next().value!);
  }
  clientContexts.set(id, context);
  return context;
}
