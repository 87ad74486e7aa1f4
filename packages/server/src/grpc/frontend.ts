import * as grpc from '@grpc/grpc-js';
import type { Identity, Logger } from '@kubetunnel/shared';
import { bindTcp, bindUnix, createGrpcServer, shutdownGracefully, shutdownNow, type GrpcServerOptions, type TlsMaterial } from './listeners.js';
import { ProxyServiceDef } from './packets.js';
import type { FrontendDeps } from '../deps.js';
import { proxyHandler } from './proxy-service.js';

export interface GrpcFrontendOptions {
  bindAddress: string;
  /** TLS port (0: any free port); undefined: no TLS listener. */
  port?: number;
  /** Unix socket path; undefined: none. */
  uds?: string;
  /** Who a caller on the Unix socket is. */
  udsIdentity: Identity;
}

/**
 * The Konnectivity client frontend: ProxyService on a TLS port (client
 * certificate or bearer token, as the CONNECT frontend) and/or on a Unix
 * socket (kube-apiserver's egress selector), each its own gRPC server so a
 * call always knows which way it came.
 */
export class GrpcFrontend {
  private readonly servers: grpc.Server[] = [];
  private readonly tlsServer?: grpc.Server;
  private readonly udsServer?: grpc.Server;

  constructor(
    private readonly options: GrpcFrontendOptions,
    deps: FrontendDeps,
    private readonly tls: TlsMaterial,
    hardening: GrpcServerOptions,
    private readonly log: Logger,
  ) {
    if (options.port !== undefined) {
      this.tlsServer = createGrpcServer(hardening);
      this.tlsServer.addService(ProxyServiceDef, { Proxy: proxyHandler(deps, { kind: 'tls' }) });
      this.servers.push(this.tlsServer);
    }
    if (options.uds !== undefined) {
      // Whoever may open the socket file is trusted: gRPC's bounds, no connection guard.
      this.udsServer = createGrpcServer({ ...hardening, name: 'grpc-uds', guard: undefined });
      this.udsServer.addService(ProxyServiceDef, { Proxy: proxyHandler(deps, { kind: 'uds', identity: options.udsIdentity }) });
      this.servers.push(this.udsServer);
    }
  }

  /** Binds the listeners; the TLS port actually bound (when there is one). */
  async listen(): Promise<{ port?: number; uds?: string }> {
    const out: { port?: number; uds?: string } = {};
    if (this.tlsServer) {
      out.port = await bindTcp(this.tlsServer, this.options.bindAddress, this.options.port!, this.tls.credentials(false));
      this.log.info({ listener: 'grpc', address: `${this.options.bindAddress}:${out.port}` }, 'grpc listening');
    }
    if (this.udsServer) {
      await bindUnix(this.udsServer, this.options.uds!, this.log);
      out.uds = this.options.uds!;
      this.log.info({ listener: 'grpc-uds', path: out.uds, user: this.options.udsIdentity.user }, 'grpc-uds listening');
    }
    return out;
  }

  drain(graceMs: number): Promise<void> {
    return Promise.all(this.servers.map((s) => shutdownGracefully(s, graceMs))).then(() => undefined);
  }

  close(): void {
    for (const s of this.servers) shutdownNow(s);
  }
}
