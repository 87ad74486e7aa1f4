import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { SERVER_TLS_POLICY, respondRaw, type Logger } from '@kubetunnel/shared';
import type { ServerConfig } from './config.js';
import { handleConnect } from './connect.js';
import type { FrontendDeps } from './deps.js';
import { SocketSet } from './sockets.js';

/** What the frontend does with non-CONNECT traffic (the L7 mode plugs in here). */
export interface HttpHandlers {
  request(req: IncomingMessage, res: ServerResponse): void;
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** Releases what the handlers keep between requests (streams kept for later requests). */
  close?(): void;
}

/** CONNECT-only: any other request is answered 405. */
export const connectOnly: HttpHandlers = {
  request(_req, res) {
    res.writeHead(405, { 'Content-Type': 'text/plain; charset=utf-8', Allow: 'CONNECT' });
    res.end('this port serves CONNECT (or /clusters/<name>/... in L7 mode)\n');
  },
  upgrade(_req, socket) {
    respondRaw(socket, 405, 'this port serves CONNECT', { Allow: 'CONNECT' });
  },
};

/**
 * The client frontend: TLS that asks for a client certificate but does not
 * require one (token clients), HTTP/1.1 only, bounded header size.
 */
export class Frontend {
  readonly server: https.Server;
  private readonly sockets = new SocketSet();

  constructor(config: ServerConfig, deps: FrontendDeps, private readonly handlers: HttpHandlers, log: Logger) {
    this.server = https.createServer({
      ...SERVER_TLS_POLICY,
      cert: config.cert,
      key: config.key,
      ca: config.ca,
      requestCert: true,
      rejectUnauthorized: false,
      maxHeaderSize: config.maxHeaderSize,
      ALPNProtocols: ['http/1.1'],
    });
    this.server.on('secureConnection', (s) => this.sockets.add(s));
    this.server.on('tlsClientError', (err) => log.debug({ err: err.message }, 'client TLS handshake failed'));
    this.server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      handleConnect(deps, req, socket, head).catch((err: unknown) => {
        log.error({ err }, 'CONNECT handler failed');
        respondRaw(socket, 500, 'internal error');
      });
    });
    this.server.on('request', (req, res) => handlers.request(req, res));
    this.server.on('upgrade', (req, socket, head) => handlers.upgrade(req, socket, head));
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
      if (err.code === 'HPE_HEADER_OVERFLOW') respondRaw(socket, 431, 'request headers too large');
      else if (err.code === 'ECONNRESET' || !socket.writable) socket.destroy();
      else respondRaw(socket, 400, 'malformed HTTP request');
    });
  }

  get openSockets(): number {
    return this.sockets.size;
  }

  close(): void {
    this.server.close();
    this.handlers.close?.();
    this.sockets.destroyAll();
  }
}
