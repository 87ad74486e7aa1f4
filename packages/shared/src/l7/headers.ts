import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Identity } from '../protocol/frame.js';

/** Hop-by-hop headers (RFC 9110 7.6.1) that never travel past one connection. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'te', 'trailer']);
/** Framing headers: the proxy frames the body itself and keeps these consistent. */
const FRAMING = new Set(['content-length', 'transfer-encoding', 'upgrade', 'host']);

/** True for a header a caller must never get through to a member apiserver. */
export function isCallerCredential(name: string): boolean {
  const n = name.toLowerCase();
  return n === 'authorization' || n === 'proxy-authorization' || n.startsWith('impersonate-') || n.startsWith('x-remote-');
}

/**
 * The caller's headers with every credential and identity claim removed:
 * Authorization, Proxy-Authorization, Impersonate-*, X-Remote-*, hop-by-hop
 * headers, and every header the caller names in Connection (so naming our
 * headers there cannot get them dropped after we add them; CVE-2021-31999).
 * Names are matched in any letter case.
 */
export function stripCallerHeaders(headers: IncomingHttpHeaders | OutgoingHttpHeaders): OutgoingHttpHeaders {
  const named = new Set<string>();
  for (const [k, v] of Object.entries(headers)) {
    if (k.toLowerCase() !== 'connection' || v === undefined) continue;
    for (const part of (Array.isArray(v) ? v.join(',') : String(v)).split(','))
      if (part.trim()) named.add(part.trim().toLowerCase());
  }
  const out: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) {
    const n = k.toLowerCase();
    if (v === undefined || isCallerCredential(n) || HOP_BY_HOP.has(n)) continue;
    if (named.has(n) && !FRAMING.has(n)) continue;
    out[n] = v;
  }
  return out;
}

/** Impersonation headers for an identity, as the kube-apiserver reads them. */
export function impersonationHeaders(id: Identity): OutgoingHttpHeaders {
  const h: OutgoingHttpHeaders = { 'impersonate-user': id.user };
  if (id.groups.length > 0) h['impersonate-group'] = [...id.groups];
  if (id.uid) h['impersonate-uid'] = id.uid;
  for (const [key, values] of Object.entries(id.extra ?? {})) {
    // Extra keys travel percent-encoded in the header name (Kubernetes convention).
    h[`impersonate-extra-${encodeURIComponent(key.toLowerCase())}`] = [...values];
  }
  return h;
}

/**
 * Removes hop-by-hop headers (and those a Connection header names) from a
 * response in place: each hop decides its own keep-alive.
 */
export function dropHopByHop(headers: IncomingHttpHeaders): void {
  const named = String(headers.connection ?? '')
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter((n) => n && !FRAMING.has(n));
  for (const n of [...HOP_BY_HOP, ...named]) delete headers[n];
}

/**
 * Response hook for a proxy: drops hop-by-hop headers, and sends the head of
 * a streamed response (no Content-Length: watches, logs -f) at once rather
 * than with its first chunk, so a watch is seen established before any event.
 */
export function onProxyResponse(upstream: IncomingMessage, res: ServerResponse): void {
  dropHopByHop(upstream.headers);
  if (upstream.headers['content-length'] === undefined)
    process.nextTick(() => {
      if (res.headersSent || res.destroyed) return;
      res.flushHeaders();
    });
}
