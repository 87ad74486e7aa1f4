import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '@kubetunnel/shared';

type CaListener = grpc.experimental.CaCertificateUpdateListener;
type IdentityListener = grpc.experimental.IdentityCertificateUpdateListener;

/**
 * The server's certificate, key and CA for the gRPC listeners, replaceable
 * while they run (new connections use the new ones), as the other listeners'
 * `setSecureContext`.
 */
export class TlsMaterial implements grpc.experimental.CertificateProvider {
  private readonly caListeners = new Set<CaListener>();
  private readonly identityListeners = new Set<IdentityListener>();

  constructor(private pem: { cert: string; key: string; ca: string }) {}

  set(pem: { cert: string; key: string; ca: string }): void {
    this.pem = pem;
    for (const l of this.caListeners) l(this.ca());
    for (const l of this.identityListeners) l(this.identity());
  }

  private ca() {
    return { caCertificate: Buffer.from(this.pem.ca) };
  }

  private identity() {
    return { certificate: Buffer.from(this.pem.cert), privateKey: Buffer.from(this.pem.key) };
  }

  // grpc-js registers its watcher after these calls return: answer on the next tick.
  addCaCertificateListener(l: CaListener): void {
    this.caListeners.add(l);
    process.nextTick(() => this.caListeners.has(l) && l(this.ca()));
  }

  removeCaCertificateListener(l: CaListener): void {
    this.caListeners.delete(l);
  }

  addIdentityCertificateListener(l: IdentityListener): void {
    this.identityListeners.add(l);
    process.nextTick(() => this.identityListeners.has(l) && l(this.identity()));
  }

  removeIdentityCertificateListener(l: IdentityListener): void {
    this.identityListeners.delete(l);
  }

  /** Server credentials that ask for a client certificate from the client CA; `require`: refuse a handshake without one. */
  credentials(require: boolean): grpc.ServerCredentials {
    return grpc.experimental.createCertificateProviderServerCredentials(this, this, require);
  }
}

/** Options every kubetunnel gRPC server shares. */
export const grpcServerOptions: grpc.ServerOptions = {
  // A DATA packet larger than this ends the call (RESOURCE_EXHAUSTED); with
  // at most 16 such messages queued per call, this bounds what a call buffers.
  'grpc.max_receive_message_length': 1024 * 1024,
  // Calls one HTTP/2 connection may hold at once (ANP clients open one per connection).
  'grpc.max_concurrent_streams': 1000,
  'grpc.keepalive_time_ms': 30_000,
  'grpc.keepalive_timeout_ms': 10_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.http2.min_ping_interval_without_data_ms': 5_000,
};

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
