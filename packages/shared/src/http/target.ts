/**
 * Request targets as the listeners accept them. Only origin-form
 * (`/path?query`, RFC 9112 3.2.1) is served; anything else (absolute-form
 * `http://host/`, authority-form, asterisk-form) is refused with 400 by the
 * caller. Parsing never throws, whatever the bytes.
 */
export interface OriginTarget {
  /** The path, as sent (not percent-decoded). */
  path: string;
  /** The query with its leading `?`, or ''. */
  query: string;
}

/** Bytes allowed in a request target: visible ASCII (Node's parser already refuses the rest). */
const TARGET_CHARS = /^[\x21-\x7e]*$/;

export function parseOriginForm(url: string | undefined): OriginTarget | undefined {
  if (url === undefined || !url.startsWith('/') || !TARGET_CHARS.test(url) || url.includes('#')) return undefined;
  const q = url.indexOf('?');
  return q < 0 ? { path: url, query: '' } : { path: url.slice(0, q), query: url.slice(q) };
}

/** Percent-decodes one path segment; undefined when the encoding is malformed. */
export function decodeSegment(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch {
    return undefined;
  }
}
