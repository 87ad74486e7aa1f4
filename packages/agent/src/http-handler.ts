import fs from 'node:fs';
import net from 'node:net';
import http from 'node:http';
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import httpProxy from 'http-proxy';
import {
  identityProblem,
  onProxyResponse,
  impersonationHeaders,
  relayUpgrade,
  sendStatus,
  sendStatusRaw,
  stripCallerHeaders,
  upgradeRequestHeaders,
  type Identity,
  type Logger,
  type MuxStream,
} from '@kubetunnel/shared';

export interface ImpersonatingProxyConfig {
  apiserver: URL;
  apiserverCA?: string;
  /** The agent's own token toward its apiserver (a service-account token), re-read as it rotates. */
  tokenFile?: string;
  log: Logger;
}

/** Answers a failed request with a Kubernetes Status, or ends a connection that is past its head. */
function fail(res: ServerResponse | Duplex, code: number, message: string): void {
  if ('writeHead' in res) sendStatus(res, code, message);
  else res.destroy();
}

/** Re-reads a token file at most every few seconds (kubelet rotates projected tokens in place). */
class TokenSource {
  private value: string | undefined;
  private readAt = 0;

  constructor(private readonly file: string | undefined) {}

  get(): string | undefined {
    if (!this.file) return undefined;
    const now = Date.now();
    if (now - this.readAt > 5000) {
      this.readAt = now;
      try {
        this.value = fs.readFileSync(this.file, 'utf8').trim();
      } catch {
        // Keep the last good token; the apiserver will answer 401 if it is stale.
      }
    }
    return this.value;
  }
}

/**
 * Completes L7 (`http`) streams: a proxy to the apiserver that impersonates
 * each stream's caller. Each stream carries HTTP/1.1 requests from the hub
 * for one caller, whose identity came in the OPEN. Every request goes to the
 * apiserver with the agent's own token and impersonation headers for that
 * identity; whatever credential or identity header arrived is removed first
 * (the hub removed them too). Responses stream back as they arrive; upgrades
 * (exec, attach, port-forward) are relayed. Refusals are Kubernetes
 * `Status` objects, as the hub's are.
 */
export class ImpersonatingProxy {
  private readonly server: http.Server;
  /** The caller of each stream being served, keyed by the stream (the socket of its requests). */
  private readonly callers = new WeakMap<Duplex, Identity>();
  private readonly proxy: httpProxy;
  private readonly agent: https.Agent;
  private readonly token: TokenSource;

  constructor(private readonly config: ImpersonatingProxyConfig) {
    this.token = new TokenSource(config.tokenFile);
    this.agent = new https.Agent({
      keepAlive: true,
      maxFreeSockets: 64,
      ...(config.apiserverCA ? { ca: config.apiserverCA } : {}),
    });
    this.proxy = httpProxy.createProxyServer({});
    this.proxy.on('proxyRes', (upstream: IncomingMessage, _req: IncomingMessage, res: ServerResponse) => onProxyResponse(upstream, res));
    this.proxy.on('error', (err: Error, _req: IncomingMessage, res: ServerResponse | Duplex) => {
      config.log.debug({ err: err.message }, 'apiserver request failed');
      fail(res, 502, `agent could not reach the apiserver: ${err.message}`);
    });
    this.server = http.createServer({ keepAliveTimeout: 0 });
    // Each request's error boundary: whatever throws fails that request only.
    const guarded =
      <A extends [IncomingMessage, ServerResponse | Duplex, ...unknown[]]>(handle: (...args: A) => void) =>
      (...args: A) => {
        try {
          handle(...args);
        } catch (err) {
          config.log.warn({ err }, 'L7 request failed at the agent');
          fail(args[1], 500, 'the agent could not send this request');
        }
      };
    this.server.on('request', guarded((req: IncomingMessage, res: ServerResponse) => this.onRequest(req, res)));
    this.server.on('upgrade', guarded((req: IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(req, socket, head)));
    this.server.on('clientError', (_err, socket: Duplex) => socket.destroy());
  }

  /** Serves the HTTP requests carried by one tunnel stream, each for `identity`. */
  handle(stream: MuxStream, identity: Identity): void {
    this.callers.set(stream, identity);
    this.server.emit('connection', stream);
  }

  /** The headers the apiserver gets for a request of `identity`. */
  upstreamHeaders(headers: http.IncomingHttpHeaders, identity: Identity): http.OutgoingHttpHeaders {
    const out = stripCallerHeaders(headers);
    out.host = this.config.apiserver.host;
    Object.assign(out, impersonationHeaders(identity));
    const token = this.token.get();
    if (token) out.authorization = `Bearer ${token}`;
    return out;
  }

  /** The caller of a request, or why it cannot be served: no identity came with its stream, or none a header can carry. */
  private callerOf(req: IncomingMessage): Identity | { status: number; reason: string } {
    const identity = this.callers.get(req.socket);
    if (!identity) return { status: 400, reason: 'L7 stream without an identity' };
    // The hub refuses these first; never throw setting headers.
    return identityProblem(identity) ?? identity;
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const caller = this.callerOf(req);
    if ('reason' in caller) return sendStatus(res, caller.status, caller.reason);
    req.headers = this.upstreamHeaders(req.headers, caller) as http.IncomingHttpHeaders;
    this.proxy.web(req, res, { target: this.config.apiserver.origin, agent: this.agent, secure: true, changeOrigin: false });
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const caller = this.callerOf(req);
    if ('reason' in caller) return sendStatusRaw(socket, caller.status, caller.reason);
    const headers = upgradeRequestHeaders(this.upstreamHeaders(req.headers, caller), req.headers.upgrade);
    const out = https.request({
      host: this.config.apiserver.hostname,
      port: this.config.apiserver.port || 443,
      method: req.method,
      path: req.url,
      headers,
      ...(this.config.apiserverCA ? { ca: this.config.apiserverCA } : {}),
      ...(net.isIP(this.config.apiserver.hostname) ? {} : { servername: this.config.apiserver.hostname }),
      agent: false,
    });
    relayUpgrade(socket, head, out, () => {});
  }

  close(): void {
    this.server.close();
    this.agent.destroy();
    this.proxy.close();
  }
}
