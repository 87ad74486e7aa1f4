import { isValidClusterName } from '@kubetunnel/shared';
import type { ClusterRegistry } from './registry.js';

export type Resolution =
  | { ok: true; cluster: string; host: string; port: number }
  | { ok: false; status: 400; reason: string };

/** Splits a CONNECT target `host:port` (IPv6 in brackets). */
export function parseAuthority(authority: string): { host: string; port: number } | undefined {
  const m = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$/.exec(authority);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return undefined;
  return { host: m[1]!.toLowerCase(), port };
}

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
): Resolution {
  const target = parseAuthority(authority ?? '');
  if (!target) return { ok: false, status: 400, reason: `malformed CONNECT target ${JSON.stringify(authority ?? '')}` };
  if (clusterHeader !== undefined) {
    if (Array.isArray(clusterHeader)) return { ok: false, status: 400, reason: 'more than one X-Cluster-Name header' };
    if (!isValidClusterName(clusterHeader))
      return { ok: false, status: 400, reason: 'invalid X-Cluster-Name: want a DNS label (a-z, 0-9, -; at most 63)' };
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

/**
 * What a tcp stream for `host:port` asks the agent to dial: that host:port
 * when an agent of the cluster allow-lists it exactly, else the cluster's
 * apiserver (whatever the host names).
 */
export function tcpTarget(registry: ClusterRegistry, r: { cluster: string; host: string; port: number }): string {
  const hostPort = `${r.host}:${r.port}`;
  const entry = registry.get(r.cluster);
  const allowListed = entry ? [...entry.agents.values()].some((t) => t.allowDest.has(hostPort)) : false;
  return allowListed ? hostPort : 'apiserver';
}
