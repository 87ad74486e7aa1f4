import { createHash } from 'node:crypto';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { clientIdentityOf, nameProblem, type Identity } from '@kubetunnel/shared';
import { refused, type Outcome } from './refusal.js';

/** Static tokens as configured: token -> identity. */
export type TokenTable = Map<string, { user: string; uid: string; groups: string[] }>;
/** The same identities by the SHA-256 (hex) of their token, as the frontends look them up. */
export type TokenIndex = ReadonlyMap<string, { user: string; uid: string; groups: string[] }>;

const digestOf = (token: string) => createHash('sha256').update(token).digest('hex');

export function indexTokens(table: TokenTable): TokenIndex {
  return new Map([...table].map(([token, id]) => [digestOf(token), id]));
}

/**
 * Parses a kube-apiserver style static token file: one `token,user,uid` line
 * each, optionally followed by a quoted, comma-separated group list.
 * Blank lines and lines starting with # are skipped.
 */
export function parseTokenFile(text: string): TokenTable {
  const table: TokenTable = new Map();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const fields = parseCsvLine(line);
    if (fields.length < 3 || fields[0] === '' || fields[1] === '')
      throw new Error(`token file line ${i + 1}: want token,user,uid[,"group1,group2"]`);
    const groups = (fields[3] ?? '').split(',').map((g) => g.trim()).filter(Boolean);
    if (table.has(fields[0]!)) throw new Error(`token file line ${i + 1}: duplicate token`);
    // Names become impersonation headers: refuse what no header can carry (identity.ts).
    for (const [what, v] of [['user', fields[1]!], ['uid', fields[2]!], ...groups.map((g) => ['group', g])] as Array<[string, string]>) {
      const p = v === '' ? undefined : nameProblem(v);
      if (p) throw new Error(`token file line ${i + 1}: ${what} ${p}`);
    }
    table.set(fields[0]!, { user: fields[1]!, uid: fields[2]!, groups });
  });
  return table;
}

function parseCsvLine(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]!;
    if (quoted) {
      if (ch === '"' && line[i + 1] === '"') {
        cur += '"';
        i++;
      } else if (ch === '"') quoted = false;
      else cur += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ',') {
      out.push(cur.trim());
      cur = '';
    } else cur += ch;
  }
  if (quoted) throw new Error('unterminated quote');
  out.push(cur.trim());
  return out;
}

/**
 * Looks a token up by its digest: one hash and one map lookup however many
 * tokens there are. How long the lookup takes depends on the digest, which
 * tells a caller nothing about the tokens it has not guessed.
 */
export function lookupToken(index: TokenIndex, token: string): Identity | undefined {
  const id = index.get(digestOf(token));
  return id && { user: id.user, uid: id.uid, groups: id.groups };
}

/**
 * What an Authorization or Proxy-Authorization header carries: the token of
 * `Bearer T`, or of `Basic base64(user:T)` with the Basic user name as well
 * (kubectl builds Basic from a proxy URL's userinfo; CONNECT-mode kubeconfigs
 * put the cluster name there). An empty password is no token. Undefined when
 * the header is absent or malformed.
 */
export function credentialsFromAuthorization(header: string | undefined): { token?: string; basicUser?: string } | undefined {
  if (!header) return undefined;
  const m = /^\s*(Bearer|Basic)\s+(\S+)\s*$/i.exec(header);
  if (!m) return undefined;
  if (m[1]!.toLowerCase() === 'bearer') return { token: m[2]! };
  const decoded = Buffer.from(m[2]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  const user = decoded.slice(0, colon);
  const token = decoded.slice(colon + 1);
  return { ...(token !== '' ? { token } : {}), ...(user !== '' ? { basicUser: user } : {}) };
}

/** The user name of `Basic base64(user:password)`, or undefined. */
export function basicUserFromAuthorization(header: string | undefined): string | undefined {
  return credentialsFromAuthorization(header)?.basicUser;
}

/** Who the caller is, or the refusal (UNAUTHENTICATED). */
export type AuthResult = Outcome<{ identity: Identity; via: 'certificate' | 'token' }>;

/**
 * Who the caller is: a verified client certificate from the CA (user = CN,
 * groups = O; agent certificates are refused), else a token.
 */
export function authenticate(socket: TLSSocket, authorization: string | undefined, tokens: TokenIndex): AuthResult {
  return authenticatePeer(socket.authorized ? socket.getPeerCertificate() : undefined, authorization, tokens);
}

/** The same, from a certificate already verified against the CA (undefined: none) and the credentials header. */
export function authenticatePeer(cert: PeerCertificate | undefined, authorization: string | undefined, tokens: TokenIndex): AuthResult {
  if (cert && Object.keys(cert).length > 0) {
    const id = clientIdentityOf(cert);
    if (!id)
      return refused('UNAUTHENTICATED', 'this certificate is not a client certificate (agent certificates are refused here, and so are serving certificates)');
    return { ok: true, identity: { user: id.user, groups: id.groups }, via: 'certificate' };
  }
  const creds = credentialsFromAuthorization(authorization);
  if (creds === undefined && authorization) return refused('UNAUTHENTICATED', 'malformed credentials');
  const token = creds?.token;
  if (token === undefined) return refused('UNAUTHENTICATED', 'no client certificate or token');
  const id = lookupToken(tokens, token);
  if (!id) return refused('UNAUTHENTICATED', 'invalid token');
  return { ok: true, identity: id, via: 'token' };
}
