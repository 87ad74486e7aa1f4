import type { IncomingMessage, ServerResponse } from 'node:http';
import http2 from 'node:http2';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { SERVER_TLS_POLICY, respondRaw, sendStatus, type Logger } from '@kubetunnel/shared';
import type { ServerConfig } from './config.js';
import { handleConnect } from './connect.js';
import type { FrontendDeps } from './deps.js';
import { SocketSet } from './sockets.js';

/** A request on the frontend: HTTP/1.1, or a stream of an HTTP/2 connection. */
export type FrontendRequest = IncomingMessage | http2.Http2ServerRequest;
export type FrontendResponse = ServerResponse | http2.Http2ServerResponse;

/** What the frontend does with non-CONNECT traffic (the L7 mode plugs in here). */
export interface HttpHandlers {
  request(req: FrontendRequest, res: FrontendResponse): void;
  /** HTTP/1.1 only: HTTP/2 has no Upgrade (exec, attach and port-forward clients use HTTP/1.1). */
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
 * Streams one HTTP/2 client connection may have open at once; a client past
 * it gets REFUSED_STREAM for the extra ones. 250 is also the default of Go's
 * HTTP/2 server (golang.org/x/net/http2), which client-go meets at an
 * apiserver.
 */
export const MAX_STREAMS_PER_CONNECTION = 250;

/** The first bytes of every HTTP/2 connection (RFC 9113 section 3.4). */
const HTTP2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

/**
 * Serves a connection that chose `h2` in ALPN but speaks HTTP/1.1 as
 * HTTP/1.1. Go clients do that to an HTTPS proxy: net/http's
 * Transport.dialConn offers the proxy the ALPN list of the one TLS
 * configuration it has (h2 and http/1.1, for the server behind the proxy),
 * then sends an HTTP/1.1 CONNECT whatever the proxy chose; kubectl in CONNECT
 * mode is such a client. So Node's dispatch (its 'secureConnection'
 * listener, which picks HTTP/2 or HTTP/1.1 by ALPN) waits for the
 * connection's first bytes: the HTTP/2 preface, or else HTTP/1.1. The bytes
 * are put back for whichever reads them; a connection that sends nothing is
 * closed by the listener guard's header timeout.
 */
function speakWhatTheClientSpeaks(server: http2.Http2SecureServer): void {
  const listeners = server.listeners('secureConnection');
  if (listeners.length !== 1) throw new Error(`unexpected 'secureConnection' listeners on the HTTP/2 server: ${listeners.length}`);
  const dispatch = listeners[0] as (socket: TLSSocket) => void;
  server.removeListener('secureConnection', dispatch);
  server.on('secureConnection', (socket: TLSSocket) => {
    if (socket.alpnProtocol !== 'h2') return dispatch.call(server, socket);
    socket.once('readable', () => {
      const head = socket.read() as Buffer | null;
      if (head === null) return void socket.destroy();
      const n = Math.min(head.length, HTTP2_PREFACE.length);
      if (!head.subarray(0, n).equals(HTTP2_PREFACE.subarray(0, n))) socket.alpnProtocol = 'http/1.1';
      socket.unshift(head);
      dispatch.call(server, socket);
    });
  });
}

/**
 * The client frontend: TLS that asks for a client certificate but does not
 * require one (token clients), bounded header size. ALPN offers `h2` and
 * `http/1.1` on the one port: CONNECT and upgrades (exec, attach,
 * port-forward) are HTTP/1.1; L7 requests are either, and an HTTP/2 client
 * (client-go, kubectl) carries all its requests and watches to the hub on
 * one connection.
 */
export class Frontend {
  readonly server: http2.Http2SecureServer;
  private readonly sockets = new SocketSet();
  private readonly sessions = new Set<http2.ServerHttp2Session>();

  constructor(config: ServerConfig, deps: FrontendDeps, private readonly handlers: HttpHandlers, log: Logger) {
    this.server = http2.createSecureServer({
      ...SERVER_TLS_POLICY,
      cert: config.cert,
      key: config.key,
      ca: config.ca,
      requestCert: true,
      rejectUnauthorized: false,
      allowHTTP1: true,
      settings: { maxConcurrentStreams: MAX_STREAMS_PER_CONNECTION, maxHeaderListSize: config.maxHeaderSize },
      // No Nagle delay on client connections. Node's HTTP/1.1 server does this
      // by default, its HTTP/2 server does not: the answer to a CONNECT
      // waited for the client's delayed ACK of the session tickets (40 ms).
      noDelay: true,
    });
    // Read by Node's HTTP/1 parser on this server's HTTP/1.1 connections.
    (this.server as unknown as { maxHeaderSize: number }).maxHeaderSize = config.maxHeaderSize;
    speakWhatTheClientSpeaks(this.server);
    this.server.on('secureConnection', (s) => this.sockets.add(s));
    this.server.on('session', (session) => {
      this.sessions.add(session);
      session.once('close', () => this.sessions.delete(session));
    });
    this.server.on('tlsClientError', (err) => log.debug({ err: err.message }, 'client TLS handshake failed'));
    this.server.on('connect', (req: FrontendRequest, socketOrRes: Duplex | http2.Http2ServerResponse, head?: Buffer) => {
      if (socketOrRes instanceof http2.Http2ServerResponse) {
        sendStatus(socketOrRes, 405, 'CONNECT is served over HTTP/1.1 on this port', { Allow: 'GET, HEAD, POST, PUT, PATCH, DELETE' });
        return;
      }
      handleConnect(deps, req as IncomingMessage, socketOrRes, head!).catch((err: unknown) => {
        log.error({ err }, 'CONNECT handler failed');
        respondRaw(socketOrRes, 500, 'internal error');
      });
    });
    this.server.on('request', (req, res) => handlers.request(req, res));
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => handlers.upgrade(req, socket, head));
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
      if (err.code === 'HPE_HEADER_OVERFLOW') respondRaw(socket, 431, 'request headers too large');
      else if (err.code === 'ECONNRESET' || !socket.writable) socket.destroy();
      else respondRaw(socket, 400, 'malformed HTTP request');
    });
  }

  get openSockets(): number {
    return this.sockets.size;
  }

  /** Takes no new connections; HTTP/2 clients are told (GOAWAY) to take new requests elsewhere, their open streams finish. */
  stopAccepting(): void {
    this.server.close();
    for (const session of this.sessions) session.close();
  }

  close(): void {
    this.stopAccepting();
    this.handlers.close?.();
    this.sockets.destroyAll();
  }
}
