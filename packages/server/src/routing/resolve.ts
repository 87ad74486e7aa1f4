import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { decodeSegment, isValidClusterName, parseHostPort, parseOriginForm } from '@kubetunnel/shared';
import { basicUserFromAuthorization } from '../auth.js';
import { refused, type Outcome } from '../refusal.js';
import type { ClusterRegistry } from '../registry.js';

/**
 * Which cluster a request is for, for every frontend: a CONNECT and a gRPC
 * dial name a cluster and a `host:port` (resolveCluster), an L7 request a
 * cluster and the path to send it (routeL7). A malformed request is refused
 * BAD_REQUEST; whether the cluster exists is the dial's business (dial.ts).
 */

export type Resolution = Outcome<{ cluster: string; host: string; port: number }>;

/** Splits a CONNECT target or dial address `host:port` (the grammar of parseHostPort); the host in lower case. */
export function parseAuthority(authority: string): { host: string; port: number } | undefined {
  const hp = parseHostPort(authority);
  return hp && { host: hp.host.toLowerCase(), port: hp.port };
}

/** What the caller calls the two inputs, for the refusal's message. */
export interface ResolveWords {
  /** The `host:port`: "CONNECT target", "dial address". */
  target: string;
  /** The header (or metadata) that names a cluster. */
  header: string;
}

export const CONNECT_WORDS: ResolveWords = { target: 'CONNECT target', header: 'X-Cluster-Name' };

/**
 * Which cluster a CONNECT is for, in order: the X-Cluster-Name header; the
 * user name of a `Proxy-Authorization: Basic` header when it names a known
 * cluster (kubectl cannot send a header to a proxy, but it sends the proxy
 * URL's userinfo: CONNECT-mode kubeconfigs use `https://<cluster>:TOKEN@hub`);
 * the CONNECT host when it equals a cluster name; the first DNS label of the
 * host when the rest equals the cluster domain. `known(name)` says whether a
 * name is a registered cluster.
 *
 * A Basic user name that names no known cluster yields to the CONNECT host
 * (older kubeconfigs and curl's --proxy-user put a person there); when the
 * host names no cluster either, the user name is reported as the unknown
 * cluster if it could be one.
 */
export function resolveCluster(
  authority: string | undefined,
  clusterHeader: string | string[] | undefined,
  known: (name: string) => boolean,
  clusterDomain?: string,
  basicUser?: string,
  words: ResolveWords = CONNECT_WORDS,
): Resolution {
  const target = parseAuthority(authority ?? '');
  if (!target) return refused('BAD_REQUEST', `malformed ${words.target} ${JSON.stringify(authority ?? '')}`);
  if (clusterHeader !== undefined) {
    if (Array.isArray(clusterHeader)) return refused('BAD_REQUEST', `more than one ${words.header} header`);
    if (!isValidClusterName(clusterHeader))
      return refused('BAD_REQUEST', `invalid ${words.header}: want a DNS label (a-z, 0-9, -; at most 63)`);
    return { ok: true, cluster: clusterHeader, ...target };
  }
  const fromUser = basicUser !== undefined && isValidClusterName(basicUser) ? basicUser : undefined;
  if (fromUser !== undefined && known(fromUser)) return { ok: true, cluster: fromUser, ...target };
  const { host } = target;
  if (isValidClusterName(host) && known(host)) return { ok: true, cluster: host, ...target };
  if (clusterDomain) {
    const suffix = '.' + clusterDomain.toLowerCase().replace(/^\.+|\.+$/g, '');
    if (host.endsWith(suffix)) {
      const label = host.slice(0, -suffix.length);
      if (isValidClusterName(label)) return { ok: true, cluster: label, ...target };
    }
  }
  // Not a cluster we can name: report it as unknown under the name the caller gave.
  return { ok: true, cluster: fromUser ?? host, ...target };
}

/** The cluster and host:port of a CONNECT request (its target, X-Cluster-Name, the Basic user of Proxy-Authorization). */
export function resolveConnect(req: IncomingMessage, registry: ClusterRegistry, clusterDomain?: string): Resolution {
  return resolveCluster(
    req.url,
    req.headers['x-cluster-name'],
    (n) => registry.get(n) !== undefined,
    clusterDomain,
    basicUserFromAuthorization(req.headers['proxy-authorization']),
  );
}

/** The same for a Konnectivity DIAL_REQ: its address and the call's x-cluster-name metadata. */
export function resolveDial(address: string, clusterMetadata: string | string[] | undefined, registry: ClusterRegistry, clusterDomain?: string): Resolution {
  return resolveCluster(address, clusterMetadata, (n) => registry.get(n) !== undefined, clusterDomain, undefined, {
    target: 'dial address',
    header: 'x-cluster-name',
  });
}

/** An L7 request's cluster and the path (query included) the member is sent. */
export type L7Route = Outcome<{ cluster: string; path: string }>;

/**
 * Which cluster an L7 request is for: `/clusters/<name>/<rest>` (the rest goes
 * to the member unchanged, query included); else any path with
 * X-Cluster-Name; else any path on a TLS connection whose server name is
 * `<name>.<serverNameSuffix>` (kubectl get --raw drops the path prefix of the
 * server URL, but keeps tls-server-name). Undefined: not an L7 request.
 */
export function routeL7(
  url: string,
  clusterHeader: string | string[] | undefined,
  serverName?: string,
  serverNameSuffix?: string,
): L7Route | undefined {
  const origin = parseOriginForm(url);
  const m = origin && /^\/clusters\/([^/]*)(.*)$/.exec(origin.path);
  if (m) {
    const name = decodeSegment(m[1]!);
    if (name === undefined) return refused('BAD_REQUEST', 'malformed cluster name in path');
    if (!isValidClusterName(name)) return refused('BAD_REQUEST', `invalid cluster name ${JSON.stringify(name)} in path`);
    return { ok: true, cluster: name, path: (m[2] || '/') + origin.query };
  }
  let cluster: string | undefined;
  if (clusterHeader !== undefined) {
    if (Array.isArray(clusterHeader) || !isValidClusterName(clusterHeader)) return refused('BAD_REQUEST', 'invalid X-Cluster-Name');
    cluster = clusterHeader;
  } else {
    const suffix = `.${serverNameSuffix}`;
    if (serverName && serverNameSuffix && serverName.toLowerCase().endsWith(suffix)) {
      const name = serverName.slice(0, -suffix.length).toLowerCase();
      if (isValidClusterName(name)) cluster = name;
    }
  }
  if (cluster === undefined) return undefined;
  // Only origin-form goes to a member (an absolute-form target would name another host).
  if (!origin) return refused('BAD_REQUEST', 'request target must be a path (origin-form)');
  return { ok: true, cluster, path: url };
}

/** routeL7 of a request on the frontend: its target, X-Cluster-Name and TLS server name. */
export function routeL7Request(req: Pick<IncomingMessage, 'socket' | 'url' | 'headers'>, serverNameSuffix: string): L7Route | undefined {
  const servername = (req.socket as TLSSocket).servername;
  return routeL7(req.url ?? '/', req.headers['x-cluster-name'], typeof servername === 'string' ? servername : undefined, serverNameSuffix);
}
