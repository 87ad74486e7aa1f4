/**
 * `host:port`, the one grammar of every place that names a dial target: a
 * CONNECT request target (RFC 9110 authority-form), a gRPC dial address, an
 * agent's allow-list entry, an OPEN's target. The host is a bracketed IPv6
 * (or IPv4) literal or a name of letters, digits, `.`, `-` and `_` (DNS
 * allows `_` in names, and container runtimes use it), at most 253
 * characters; the port is decimal, 1 to 65535. Nothing else: no userinfo,
 * no empty host or port, no unbracketed IPv6.
 */
export interface HostPort {
  /** As written: letter case kept, an IPv6 literal in its brackets. */
  host: string;
  port: number;
}

const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]{1,253}):(\d{1,5})$/;

/** Parses `host:port`; undefined when `s` does not follow the grammar above. Never throws. */
export function parseHostPort(s: string): HostPort | undefined {
  const m = HOST_PORT.exec(s);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return undefined;
  return { host: m[1]!, port };
}

/** True when `s` is a `host:port` of the grammar above. */
export function isValidHostPort(s: string): boolean {
  return parseHostPort(s) !== undefined;
}

/** The host as a socket connects to it: an IPv6 literal without its brackets. */
export function unbracketHost(host: string): string {
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
}
