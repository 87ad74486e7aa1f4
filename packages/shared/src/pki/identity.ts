import type { PeerCertificate } from 'node:tls';
import { hasControlCharacter, isValidClusterName } from '../names.js';
import { AGENT_ORGANIZATION, AGENT_URI_PREFIX } from './issue.js';

/**
 * Splits Node's `subjectaltname` string ("DNS:a, URI:urn:x, IP Address:1.2.3.4")
 * into [type, value] pairs. Node quotes a value that contains a comma or a
 * quote (JSON style), so a quoted value is one value, whatever is inside it.
 */
export function parseSubjectAltName(san: string | undefined): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  if (!san) return out;
  let i = 0;
  while (i < san.length) {
    while (san[i] === ' ' || san[i] === ',') i++;
    const colon = san.indexOf(':', i);
    if (colon < 0) break;
    const type = san.slice(i, colon);
    i = colon + 1;
    let value: string;
    if (san[i] === '"') {
      // A JSON string literal: find its end, honouring escapes.
      let j = i + 1;
      while (j < san.length && san[j] !== '"') j += san[j] === '\\' ? 2 : 1;
      try {
        value = JSON.parse(san.slice(i, j + 1)) as string;
      } catch {
        value = '\u0000invalid';
      }
      i = j + 1;
    } else {
      const comma = san.indexOf(',', i);
      const end = comma < 0 ? san.length : comma;
      value = san.slice(i, end);
      i = end;
    }
    out.push([type, value]);
  }
  return out;
}

function fieldValues(v: string | string[] | undefined): string[] {
  if (v === undefined) return [];
  return Array.isArray(v) ? v : [v];
}

function agentUris(cert: PeerCertificate): string[] {
  return parseSubjectAltName(cert.subjectaltname)
    .filter(([type, value]) => type === 'URI' && value.startsWith(AGENT_URI_PREFIX))
    .map(([, value]) => value);
}

const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';

/**
 * A certificate for the client role only: its extended key usage names
 * clientAuth and not serverAuth. A serving certificate (the hub's own, or any
 * other) never authenticates as a user or an agent, even when a trusted CA
 * signed it; nor does a certificate that names no usage.
 */
export function isClientRoleCert(cert: PeerCertificate): boolean {
  const eku = cert.ext_key_usage ?? [];
  return eku.includes(CLIENT_AUTH) && !eku.includes(SERVER_AUTH);
}

/** The cluster an agent certificate binds, or undefined if it is not (exactly) an agent certificate. */
export function agentClusterOf(cert: PeerCertificate | undefined): string | undefined {
  if (!cert || !cert.subject) return undefined;
  if (!isClientRoleCert(cert)) return undefined;
  const uris = agentUris(cert);
  if (uris.length !== 1) return undefined;
  const cluster = uris[0]!.slice(AGENT_URI_PREFIX.length);
  return isValidClusterName(cluster) ? cluster : undefined;
}

/**
 * The user (CN) and groups (O) of a client certificate; undefined for an
 * agent certificate (any agent URI SAN, or O = kubetunnel:agents), which the
 * client frontend refuses, for a certificate not in the client role (no
 * clientAuth usage, or serverAuth), and for no (or more than one) CN.
 */
export function clientIdentityOf(cert: PeerCertificate | undefined): { user: string; groups: string[] } | undefined {
  if (!cert || !cert.subject) return undefined;
  if (!isClientRoleCert(cert)) return undefined;
  const groups = fieldValues(cert.subject.O as string | string[] | undefined);
  if (agentUris(cert).length > 0 || groups.includes(AGENT_ORGANIZATION)) return undefined;
  const cn = fieldValues(cert.subject.CN as string | string[] | undefined);
  if (cn.length !== 1 || cn[0] === '') return undefined;
  // Names go on into headers (Impersonate-User/Group): refuse what issuing refuses.
  if ([...cn, ...groups].some(hasControlCharacter)) return undefined;
  return { user: cn[0]!, groups };
}
