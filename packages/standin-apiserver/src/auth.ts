import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { Identity, TokenUser } from './types.js';
import type { StatusDetails } from './status.js';

export interface AuthConfig {
  tokens: Record<string, TokenUser>;
  /** Users allowed to impersonate. */
  impersonators: Set<string>;
  /** Whether verified client certificates authenticate. */
  clientCerts: boolean;
}

export type AuthResult =
  | { ok: true; user: Identity; effective: Identity }
  | { ok: false; code: number; message: string; details?: StatusDetails };

const AUTHENTICATED = 'system:authenticated';

/** Authenticates a request (client certificate, then bearer token) and applies impersonation. */
export function authenticate(req: IncomingMessage, config: AuthConfig): AuthResult {
  const user = fromClientCert(req, config) ?? fromToken(req, config);
  if (!user) return { ok: false, code: 401, message: 'Unauthorized' };
  return impersonate(req, user, config);
}

function fromClientCert(req: IncomingMessage, config: AuthConfig): Identity | undefined {
  if (!config.clientCerts) return undefined;
  const socket = req.socket as TLSSocket;
  if (typeof socket.getPeerCertificate !== 'function' || !socket.authorized) return undefined;
  const subject = socket.getPeerCertificate().subject;
  const cn = list(subject?.CN)[0];
  if (!cn) return undefined;
  return withAuthenticated({ username: cn, groups: list(subject?.O), extra: {} });
}

function fromToken(req: IncomingMessage, config: AuthConfig): Identity | undefined {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  const token = match?.[1];
  if (!token || !Object.prototype.hasOwnProperty.call(config.tokens, token)) return undefined;
  const known = config.tokens[token]!;
  return withAuthenticated({ username: known.user, groups: [...known.groups], extra: {} });
}

function impersonate(req: IncomingMessage, user: Identity, config: AuthConfig): AuthResult {
  // Header values as the real apiserver reads them: the bytes as UTF-8 (Node hands them over as Latin-1).
  // From the raw lines, one value per line as sent: over HTTP/2, Node joins repeated headers in `headers`, and has no headersDistinct.
  const headers: NodeJS.Dict<string[]> = {};
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i]!.toLowerCase();
    (headers[name] ??= []).push(Buffer.from(req.rawHeaders[i + 1]!, 'latin1').toString('utf8'));
  }
  const names = Object.keys(headers).filter((h) => h.startsWith('impersonate-'));
  if (names.length === 0) return { ok: true, user, effective: user };

  const target = headers['impersonate-user']?.[0];
  if (!config.impersonators.has(user.username)) {
    const name = target ?? headers['impersonate-group']?.[0] ?? '';
    const resource = target !== undefined ? 'users' : 'groups';
    return {
      ok: false,
      code: 403,
      message: `${resource} "${name}" is forbidden: User "${user.username}" cannot impersonate resource "${resource}" in API group "" at the cluster scope`,
      details: { name, kind: resource },
    };
  }
  if (target === undefined || target === '') {
    return { ok: false, code: 400, message: 'impersonation headers were sent without Impersonate-User' };
  }

  const extra: Record<string, string[]> = {};
  for (const name of names) {
    if (!name.startsWith('impersonate-extra-')) continue;
    const key = decodeKey(name.slice('impersonate-extra-'.length));
    extra[key] = [...(headers[name] ?? [])];
  }
  const uid = headers['impersonate-uid']?.[0];
  const groups = [...(headers['impersonate-group'] ?? [])];
  const effective: Identity = { username: target, groups, extra, ...(uid !== undefined ? { uid } : {}) };
  return { ok: true, user, effective: target === 'system:anonymous' ? effective : withAuthenticated(effective) };
}

/** The real apiserver adds `system:authenticated` to every authenticated identity. */
function withAuthenticated(identity: Identity): Identity {
  if (!identity.groups.includes(AUTHENTICATED)) identity.groups.push(AUTHENTICATED);
  return identity;
}

function decodeKey(key: string): string {
  try {
    return decodeURIComponent(key);
  } catch {
    return key;
  }
}

function list(value: string | string[] | undefined): string[] {
  if (value === undefined) return [];
  return Array.isArray(value) ? value : [value];
}
