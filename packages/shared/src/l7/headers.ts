import type { IncomingHttpHeaders, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { Http2ServerResponse } from 'node:http2';
import type { Identity } from '../protocol/frame.js';

/** Hop-by-hop headers (RFC 9110 7.6.1) that never travel past one connection. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'te', 'trailer']);
/** Framing headers: the proxy frames the body itself and keeps these consistent. */
const FRAMING = new Set(['content-length', 'transfer-encoding', 'upgrade', 'host']);

/** Adds the header names a Connection header's value lists (lower case) to `named`. */
function addConnectionNames(named: Set<string>, value: string | number | string[]): void {
  for (const part of (Array.isArray(value) ? value.join(',') : String(value)).split(',')) {
    const name = part.trim().toLowerCase();
    if (name) named.add(name);
  }
}

/** True when the head of an HTTP/1.1 request announces a body: any Transfer-Encoding, or a Content-Length other than 0. */
export function http1HasBody(headers: IncomingHttpHeaders): boolean {
  const length = headers['content-length'];
  return headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

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
  for (const [k, v] of Object.entries(headers)) if (k.toLowerCase() === 'connection' && v !== undefined) addConnectionNames(named, v);
  const out: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) {
    const n = k.toLowerCase();
    if (v === undefined || isCallerCredential(n) || HOP_BY_HOP.has(n)) continue;
    if (named.has(n) && !FRAMING.has(n)) continue;
    out[n] = v;
  }
  return out;
}

/**
 * A header value that carries `text` as its UTF-8 bytes. Node writes a string
 * header value one byte per character (Latin-1) and throws ERR_INVALID_CHAR
 * for anything above U+00FF; a Go apiserver reads the bytes as UTF-8. So the
 * UTF-8 bytes go out as a Latin-1 string: `开发` travels as E5 BC 80 E5 8F 91
 * and `é` as C3 A9 (sent as is, `é` would be the byte E9, not UTF-8, and the
 * member would see U+FFFD). ASCII is unchanged.
 */
export function utf8HeaderValue(text: string): string {
  return Buffer.from(text, 'utf8').toString('latin1');
}

/** Characters allowed in a header name (RFC 9110 tchar), except '%', which escapes. */
const TCHAR = /^[!#$&'*+\-.^_`|~0-9A-Za-z]$/;

/**
 * An Impersonate-Extra-* key as a header name suffix: the key's UTF-8 bytes,
 * every byte that is not a header name character (and '%') percent-encoded,
 * as client-go escapes it and the apiserver unescapes it.
 */
export function extraKeyHeaderName(key: string): string {
  let out = '';
  for (const byte of Buffer.from(key, 'utf8')) {
    const ch = String.fromCharCode(byte);
    out += byte < 0x80 && TCHAR.test(ch) ? ch : '%' + byte.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/**
 * Impersonation headers for an identity, as the kube-apiserver reads them:
 * one Impersonate-Group line per group (never joined: a group may contain a
 * comma), every value as its UTF-8 bytes (utf8HeaderValue). The identity must
 * have passed `identityProblem` (identity.ts): a control character would make
 * Node throw here.
 */
export function impersonationHeaders(id: Identity): OutgoingHttpHeaders {
  const h: OutgoingHttpHeaders = { 'impersonate-user': utf8HeaderValue(id.user) };
  if (id.groups.length > 0) h['impersonate-group'] = id.groups.map(utf8HeaderValue);
  if (id.uid) h['impersonate-uid'] = utf8HeaderValue(id.uid);
  for (const [key, values] of Object.entries(id.extra ?? {})) {
    // Extra keys are lower-cased, then escaped into the header name (Kubernetes convention).
    h[`impersonate-extra-${extraKeyHeaderName(key.toLowerCase())}`] = values.map(utf8HeaderValue);
  }
  return h;
}

/**
 * A relayed request's headers as undici is to send them, in place: undici
 * frames the body itself (chunked unless Content-Length gives its length),
 * an Upgrade header outside an upgrade is not for the next hop, nor an
 * Expect that this hop's server answered already.
 */
export function undiciRequestHeaders(headers: OutgoingHttpHeaders): Record<string, string | string[]> {
  delete headers['transfer-encoding'];
  delete headers.upgrade;
  delete headers.expect;
  return headers as Record<string, string | string[]>;
}

/**
 * A response's raw header lines (name, value, name, value, ...) as the next
 * hop is sent them, in order and letter case: no hop-by-hop header, none
 * that Connection names, and no Transfer-Encoding (each hop frames the body
 * itself). Values stay the bytes they came as (Latin-1 strings, as Node
 * reads and writes header values).
 */
export function relayedHeaderLines(raw: Buffer[]): string[] {
  const lines = raw.map((b) => b.toString('latin1'));
  const named = new Set<string>();
  for (let i = 0; i + 1 < lines.length; i += 2) if (lines[i]!.toLowerCase() === 'connection') addConnectionNames(named, lines[i + 1]!);
  const out: string[] = [];
  for (let i = 0; i + 1 < lines.length; i += 2) {
    const name = lines[i]!.toLowerCase();
    if (HOP_BY_HOP.has(name) || name === 'transfer-encoding' || (named.has(name) && !FRAMING.has(name))) continue;
    out.push(lines[i]!, lines[i + 1]!);
  }
  return out;
}

/**
 * Sends the head of a streamed answer (no Content-Length: watches, logs -f)
 * at once rather than with its first chunk, so a watch is seen established
 * before any event. When body bytes came in with the head (a chunked answer
 * read in one go, as most apiserver answers of a few KiB are), the head waits
 * for them instead: they are relayed next, so head and body leave in one
 * write rather than two at every hop. Call it once the head is set on `res`,
 * before the body is relayed; `bodyCame` tells, a tick later, whether body
 * bytes came with the head.
 */
export function flushStreamedHead(streamed: boolean, bodyCame: () => boolean, res: ServerResponse | Http2ServerResponse): void {
  if (!streamed) return;
  process.nextTick(() => {
    if (bodyCame() || (res instanceof Http2ServerResponse ? res.stream.destroyed : res.destroyed)) return;
    // Sends nothing when the head went already. Http2ServerResponse has it too; Node's types omit it.
    (res as ServerResponse).flushHeaders();
  });
}
