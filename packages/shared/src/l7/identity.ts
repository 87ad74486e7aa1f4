import { hasControlCharacter } from '../names.js';
import { DEFAULT_MAX_PAYLOAD } from '../protocol/codec.js';
import type { Reason } from '../errors.js';
import { APISERVER_TARGET, type Identity, type OpenRequest } from '../protocol/frame.js';

/**
 * Whether an authenticated identity can be carried to a member apiserver as
 * impersonation headers, decided where it is authenticated (the hub's L7
 * frontend, a token file being loaded) and again where it is used (the
 * agent), so that a name no header can carry is refused with a status and a
 * reason instead of throwing inside the tunnel.
 *
 * What is carried, and how:
 * - Any Unicode text, Latin-1 or not (`开发`, `é`): as its UTF-8 bytes in the
 *   header value, which is what a Go apiserver reads as a string (see
 *   `utf8HeaderValue` in headers.ts).
 * What is refused (status 403, the identity is not acted for):
 * - Control characters (C0 including TAB, DEL, C1): HTTP forbids most of
 *   them in a header value, and those it allows (TAB) are trimmed or folded
 *   by parsers, so the member would see another name than the hub authorized.
 * - Leading or trailing spaces: every HTTP parser trims them (" admin" would
 *   reach the member as "admin").
 * - Empty user, group or extra key, and text that is not well-formed UTF-16
 *   (a lone surrogate has no UTF-8 form: it would arrive as U+FFFD).
 * - An identity whose OPEN frame would exceed the smallest frame payload any
 *   peer's decoder accepts (status 431): the agent would take the frame as a
 *   protocol violation and close the whole tunnel. 2,000 short groups fit; a
 *   group list of more than about 64 KiB does not.
 */

/** The largest OPEN payload sent: the decoder limit every peer runs with at least. */
export const MAX_OPEN_PAYLOAD = DEFAULT_MAX_PAYLOAD;

export interface IdentityProblem {
  /** 403: a name cannot be carried; 431: the identity is too large for the tunnel. */
  status: 403 | 431;
  /** The same as a reason of the error table (BAD_IDENTITY: 403, IDENTITY_TOO_LARGE: 431), for the hub's refusal. */
  cause: Extract<Reason, 'BAD_IDENTITY' | 'IDENTITY_TOO_LARGE'>;
  /** One line, safe to show the caller (names are quoted with JSON escapes). */
  reason: string;
}

// Besides C0 and DEL (hasControlCharacter): C1 controls, which no header carries either.
const C1 = /[\u0080-\u009f]/;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Why `value` cannot be carried as a name in a header, or undefined if it can. */
export function nameProblem(value: string): string | undefined {
  if (value === '') return 'is empty';
  if (hasControlCharacter(value) || C1.test(value)) return 'contains a control character';
  if (LONE_SURROGATE.test(value)) return 'is not well-formed Unicode';
  if (value.startsWith(' ') || value.endsWith(' ')) return 'starts or ends with a space';
  return undefined;
}

/** A name for a reason line: JSON-quoted, every control character escaped (C1 too), cut short. */
function shown(value: string): string {
  return JSON.stringify(value.length > 64 ? value.slice(0, 64) + '…' : value).replace(
    /[\u007f-\u009f]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/** Bytes of the OPEN payload that carries `request` (window + JSON), as the codec encodes it. */
export function openPayloadBytes(request: OpenRequest): number {
  return 4 + Buffer.byteLength(JSON.stringify(request), 'utf8');
}

/**
 * Why `id` cannot be carried to a member apiserver (see above), or undefined
 * if it can. Never throws.
 */
export function identityProblem(id: Identity, request: OpenRequest = { kind: 'http', target: APISERVER_TARGET, identity: id }): IdentityProblem | undefined {
  const refuse = (what: string, value: string, problem: string): IdentityProblem => ({
    status: 403,
    cause: 'BAD_IDENTITY',
    reason: `identity cannot be carried to the member cluster: ${what} ${shown(value)} ${problem}`,
  });
  let p = nameProblem(id.user);
  if (p) return refuse('user', id.user, p);
  for (const g of id.groups) if ((p = nameProblem(g))) return refuse('group', g, p);
  if (id.uid && (p = nameProblem(id.uid))) return refuse('uid', id.uid, p);
  for (const [key, values] of Object.entries(id.extra ?? {})) {
    if ((p = nameProblem(key))) return refuse('extra key', key, p);
    for (const v of values) if ((p = nameProblem(v))) return refuse(`extra ${shown(key)} value`, v, p);
  }
  const size = openPayloadBytes(request);
  if (size > MAX_OPEN_PAYLOAD)
    return {
      status: 431,
      cause: 'IDENTITY_TOO_LARGE',
      reason: `identity too large for the tunnel: ${id.groups.length} groups, ${size} bytes (at most ${MAX_OPEN_PAYLOAD})`,
    };
  return undefined;
}
