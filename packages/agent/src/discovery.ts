import { Resolver } from 'node:dns/promises';
import net from 'node:net';

/**
 * Where the agent finds server replicas. `wss://HOST:PORT` is one endpoint
 * (it may be a load balancer over several replicas); `dns:///NAME:PORT`
 * names a headless Service: every address NAME resolves to is a replica,
 * reached at PORT with NAME as the TLS server name.
 */
export type ServerSource = { kind: 'url'; url: string } | { kind: 'dns'; name: string; port: number };

/** One place to dial: a URL, and the TLS server name when the URL holds an address. */
export interface Endpoint {
  url: string;
  servername?: string;
  /** The source it came from (a dns:/// entry resolves to several). */
  source: ServerSource;
}

/** Parses one --server value; a string is the reason it is not valid. */
export function parseServerSource(text: string): ServerSource | string {
  if (text.startsWith('dns:')) {
    const m = /^dns:\/\/\/([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):(\d{1,5})$/.exec(text);
    const port = Number(m?.[3]);
    if (!m || port < 1 || port > 65535) return `want dns:///NAME:PORT, got ${JSON.stringify(text)}`;
    return { kind: 'dns', name: m[1]!.toLowerCase(), port };
  }
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return `not a URL: ${JSON.stringify(text)}`;
  }
  if (url.protocol !== 'wss:') return `want a wss:// URL or dns:///NAME:PORT, got ${JSON.stringify(text)}`;
  return { kind: 'url', url: text };
}

/** Every IPv4 and IPv6 address of `name`, sorted; empty when it has none. Other failures throw. */
export type Lookup = (name: string) => Promise<string[]>;

/** A lookup through `servers` (host or host:port), or through the system's resolvers when empty. */
export function dnsLookup(servers: string[] = []): Lookup {
  const resolver = new Resolver();
  if (servers.length > 0) resolver.setServers(servers);
  const family = async (resolve: (name: string) => Promise<string[]>, name: string) => {
    try {
      return await resolve(name);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENODATA' || code === 'ENOTFOUND') return [];
      throw err;
    }
  };
  return async (name) => {
    const [v4, v6] = await Promise.all([family((n) => resolver.resolve4(n), name), family((n) => resolver.resolve6(n), name)]);
    return [...v4, ...v6].sort();
  };
}

/** The endpoints of the sources now: URLs as they are, dns:/// names expanded to their addresses. */
export async function resolveEndpoints(sources: readonly ServerSource[], lookup: Lookup): Promise<Endpoint[]> {
  const out: Endpoint[] = [];
  for (const source of sources) {
    if (source.kind === 'url') {
      out.push({ url: source.url, source });
      continue;
    }
    for (const address of await lookup(source.name)) {
      const host = net.isIPv6(address) ? `[${address}]` : address;
      out.push({ url: `wss://${host}:${source.port}`, servername: source.name, source });
    }
  }
  return out;
}
