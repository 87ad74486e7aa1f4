import type { SecureContextOptions, TlsOptions } from 'node:tls';

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
