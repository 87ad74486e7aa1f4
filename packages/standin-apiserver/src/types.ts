import type { IncomingHttpHeaders } from 'node:http';
import type { NamespaceMetadata } from './namespaces.js';

/** A user known to the stand-in apiserver by bearer token. */
export interface TokenUser {
  user: string;
  groups: string[];
}

export interface StandinApiserverOptions {
  /** Cluster name; shows up in /version, the `<cluster>-apps` namespace, node names. */
  cluster: string;
  /** PEM server certificate (chain) and key. */
  cert: string;
  key: string;
  /** PEM CA; when given, client certificates signed by it authenticate (user = CN, groups = O). */
  ca?: string;
  /** Bearer tokens accepted in `Authorization: Bearer <token>`. */
  tokens: Record<string, TokenUser>;
  host?: string;
  port?: number;
  /** Offer HTTP/2 by ALPN beside HTTP/1.1, as a kube-apiserver does (default true); false: HTTP/1.1 only. */
  http2?: boolean;
  /** Users allowed to send Impersonate-* headers. Default: every token user. */
  impersonators?: string[];
  /**
   * Called with every Authorization and Proxy-Authorization header value the
   * stand-in receives, unredacted (tests check which credentials reached a
   * member). The recorded requests keep them redacted.
   */
  onCredential?: (header: 'authorization' | 'proxy-authorization', value: string) => void;
}

/** The identity a request acts as (after impersonation). */
export interface Identity {
  username: string;
  uid?: string;
  groups: string[];
  extra: Record<string, string[]>;
}

/** One request as it reached the stand-in (bearer tokens redacted). */
export interface RecordedRequest {
  method: string;
  /** Path including the query string, exactly as received. */
  path: string;
  /** `1.1` or `2.0`: the protocol the request came over. */
  httpVersion: string;
  /** Lower-cased header names; repeated headers joined by Node's rules. HTTP/2's pseudo-headers are left out. */
  headers: IncomingHttpHeaders;
  /** Header names and values as received, in order, duplicates kept. */
  rawHeaders: string[];
  /** The authenticated user (before impersonation), if authentication succeeded. */
  user?: string;
  /** The identity the request acted as (after impersonation), if authentication succeeded. */
  effectiveUser?: string;
  /** True when the request asked for a protocol upgrade (exec, port-forward). */
  upgrade: boolean;
  time: Date;
}

export interface StandinApiserver {
  /** `https://host:port` */
  url: string;
  port: number;
  close(): Promise<void>;
  /** The last 1000 requests, oldest first. */
  requests: RecordedRequest[];
  /** Adds a namespace (watchers see ADDED), with extra labels and annotations if given. */
  addNamespace(name: string, metadata?: NamespaceMetadata): void;
  deleteNamespace(name: string): void;
  /** Currently open TLS sockets. */
  readonly connections: number;
}
