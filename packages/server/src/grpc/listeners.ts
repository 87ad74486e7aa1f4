import fs from 'node:fs';
import http2 from 'node:http2';
import type { SecureContextOptions } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { SERVER_TLS_POLICY, type Logger } from '@kubetunnel/shared';

/** What a listener's TLS needs: the server's certificate and key, and the client CA. */
export interface TlsPem {
  cert: string;
  key: string;
  ca: string;
}

/** The secure-context options of a gRPC listener: the shared TLS policy with the current certificate, key and CA. */
function contextOptions(pem: TlsPem): SecureContextOptions {
  // A new secure context starts from Node's defaults: the policy goes with it every time.
  return { ...SERVER_TLS_POLICY, cert: pem.cert, key: pem.key, ca: pem.ca };
}

/**
 * Server credentials under SERVER_TLS_POLICY (TLS 1.2 and up, forward-secret
 * AEAD suites, the server's order), as the other listeners: grpc-js's own
 * credentials take Node's default suites. The policy is in the TLS server's
 * options and in every secure context set on it when the material changes.
 */
class PolicyCredentials extends grpc.ServerCredentials {
  constructor(pem: TlsPem, requireClientCertificate: boolean) {
    super({ ...SERVER_TLS_POLICY, requestCert: true, rejectUnauthorized: requireClientCertificate }, contextOptions(pem));
  }

  update(pem: TlsPem): void {
    this.updateSecureContextOptions(contextOptions(pem));
  }

  _equals(other: grpc.ServerCredentials): boolean {
    return other === this;
  }
}

/**
 * The server's certificate, key and CA for the gRPC listeners, replaceable
 * while they run (new connections use the new ones), as the other listeners'
 * `setSecureContext`.
 */
export class TlsMaterial {
  private readonly issued = new Set<PolicyCredentials>();

  constructor(private pem: TlsPem) {}

  set(pem: TlsPem): void {
    this.pem = pem;
    for (const c of this.issued) c.update(pem);
  }

  /** Server credentials that ask for a client certificate from the client CA; `require`: refuse a handshake without one. */
  credentials(require: boolean): grpc.ServerCredentials {
    const c = new PolicyCredentials(this.pem, require);
    this.issued.add(c);
    return c;
  }
}

/**
 * gRPC-level bounds of every kubetunnel gRPC server, so that one peer cannot
 * hurt the others: how many calls one HTTP/2 connection may hold, how large
 * one message may be, and keepalive both ways (dead peers are found by our
 * pings; a peer pinging too often is told so and closed, see PingPolicy).
 */
export const GrpcBounds = {
  /** Calls one HTTP/2 connection may hold at once (ANP clients open one connection per call); past it the peer's new streams are refused. */
  maxConcurrentStreams: 1000,
  /** A larger message ends its call RESOURCE_EXHAUSTED; with grpc-js reading one message ahead per call, this bounds what a call buffers. */
  maxReceiveMessageBytes: 1024 * 1024,
  /** Our keepalive: a PING after this long without one, and the connection closed if its answer takes longer than the timeout. */
  keepaliveTimeMs: 30_000,
  keepaliveTimeoutMs: 10_000,
  /** A peer's PINGs on a connection with no call open, closer together than this, are strikes (gRPC's min_recv_ping_interval_without_data). */
  minPingIntervalWithoutCallsMs: 5_000,
  /** Strikes allowed; the next is answered GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and the connection closed (gRPC's max_ping_strikes). */
  maxPingStrikes: 2,
} as const;

/** Options every kubetunnel gRPC server shares. */
export const grpcServerOptions: grpc.ServerOptions = {
  'grpc.max_receive_message_length': GrpcBounds.maxReceiveMessageBytes,
  'grpc.max_concurrent_streams': GrpcBounds.maxConcurrentStreams,
  'grpc.keepalive_time_ms': GrpcBounds.keepaliveTimeMs,
  'grpc.keepalive_timeout_ms': GrpcBounds.keepaliveTimeoutMs,
};

export interface GrpcServerOptions {
  /** The listener's name in logs and metrics. */
  name: string;
  /** A connection with no call open for this long is closed (GOAWAY): the listener's idle timeout. */
  idleTimeoutMs: number;
  /** Puts the listener guard (connection caps, handshake and header timeouts) on the HTTP/2 server under a TLS listener. */
  guard?: (server: http2.Http2SecureServer) => void;
  /** A connection closed for pinging too often. */
  onPingFlood?: () => void;
  log: Logger;
}

type Http2Factory = (credentials: grpc.ServerCredentials) => http2.Http2Server | http2.Http2SecureServer;

/**
 * A grpc-js server whose HTTP/2 servers are hardened as they are made: the
 * listener guard on TLS listeners and the ping policy on every connection.
 * grpc-js makes its HTTP/2 server inside bindAsync and offers no option to
 * pass one in; it is taken there (createHttp2Server), before it listens.
 */
export function createGrpcServer(o: GrpcServerOptions): grpc.Server {
  const server = new grpc.Server({ ...grpcServerOptions, 'grpc.max_connection_idle_ms': o.idleTimeoutMs });
  const make = (server as unknown as { createHttp2Server?: Http2Factory }).createHttp2Server;
  if (typeof make !== 'function') throw new Error('this @grpc/grpc-js makes its HTTP/2 servers another way: the gRPC listeners cannot be guarded');
  const harden: Http2Factory = (credentials) => {
    const h2 = make.call(server, credentials);
    if (credentials._isSecure()) o.guard?.(h2 as http2.Http2SecureServer);
    h2.on('session', (session: http2.ServerHttp2Session) => pingPolicy(session, o));
    return h2;
  };
  Object.defineProperty(server, 'createHttp2Server', { value: harden });
  return server;
}

/**
 * gRPC's keepalive enforcement: with no call open, PINGs closer together
 * than GrpcBounds.minPingIntervalWithoutCallsMs are strikes, and past
 * GrpcBounds.maxPingStrikes the connection is told GOAWAY ENHANCE_YOUR_CALM
 * "too_many_pings" (what gRPC clients read to back off) and closed. While
 * calls are open, pings go unlimited (flow-control probes ride on them);
 * a peer that pings without reading the answers is closed by HTTP/2 itself.
 */
function pingPolicy(session: http2.ServerHttp2Session, o: GrpcServerOptions): void {
  let calls = 0;
  let last = -Infinity;
  let strikes = 0;
  session.on('stream', (stream: http2.ServerHttp2Stream) => {
    calls++;
    stream.once('close', () => calls--);
  });
  session.on('ping', () => {
    const now = performance.now();
    if (calls === 0 && now - last < GrpcBounds.minPingIntervalWithoutCallsMs && ++strikes > GrpcBounds.maxPingStrikes && !session.closed) {
      o.log.info({ listener: o.name, remote: session.socket?.remoteAddress }, 'connection closed: too many pings');
      o.onPingFlood?.();
      session.goaway(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM, 0, Buffer.from('too_many_pings'));
      session.close();
    }
    last = now;
  });
}

export function bindTcp(server: grpc.Server, host: string, port: number, creds: grpc.ServerCredentials): Promise<number> {
  const h = host.includes(':') ? `[${host}]` : host;
  return new Promise((resolve, reject) =>
    server.bindAsync(`${h}:${port}`, creds, (err, bound) => (err ? reject(err) : resolve(bound))),
  );
}

/**
 * Binds a Unix socket readable and writable by this process's user only
 * (mode 0600): whoever can open it is trusted as the identity configured for
 * it. A socket file left by an earlier run is replaced; any other file there
 * is an error.
 */
export async function bindUnix(server: grpc.Server, path: string, log: Logger): Promise<void> {
  const stat = fs.lstatSync(path, { throwIfNoEntry: false });
  if (stat) {
    if (!stat.isSocket()) throw new Error(`--grpc-uds ${path}: exists and is not a socket`);
    fs.unlinkSync(path);
    log.info({ path }, 'removed a socket file left by an earlier run');
  }
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix:${path}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );
  fs.chmodSync(path, 0o600);
}

/** Stops a gRPC server: every call and connection ends now. */
export function shutdownNow(server: grpc.Server): void {
  server.forceShutdown();
}

/** Stops accepting calls and resolves once the running ones have ended (or `graceMs` passed, then ends them). */
export function shutdownGracefully(server: grpc.Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    timer.unref();
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
