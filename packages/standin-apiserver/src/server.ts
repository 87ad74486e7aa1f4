import https from 'node:https';
import http2 from 'node:http2';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { WebSocketServer, type WebSocket } from 'ws';
import { authenticate, type AuthConfig, type AuthResult } from './auth.js';
import { EXEC_PROTOCOLS, runExecSession } from './exec.js';
import { NamespaceStore } from './namespaces.js';
import { echoPod, podsIn } from './pods.js';
import { PORTFORWARD_PROTOCOLS, runPortForwardSession } from './portforward.js';
import { handleApiRequest, type ApiContext } from './routes.js';
import { notFound, rejectUpgrade, sendStatus, sendText } from './status.js';
import type { RecordedRequest, StandinApiserver, StandinApiserverOptions } from './types.js';

const MAX_RECORDED = 1000;
/** Streams an HTTP/2 connection may carry at once: what k8s.io/apiserver's recommended serving options set (--http2-max-streams-per-connection). */
const H2_MAX_STREAMS = 1000;
const H2_MAX_HEADER_BYTES = 1 << 20;
const H2_MAX_HEADER_LINES = 100_000;
const HEALTH = /^\/(healthz|livez|readyz)(\/[^?]*)?(\?.*)?$/;
const STREAMING = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/(exec|attach|portforward)\/?$/;

/**
 * Starts the stand-in apiserver: HTTPS (HTTP/2 and HTTP/1.1 by ALPN, as a
 * kube-apiserver; upgrades over HTTP/1.1) with just enough of
 * the Kubernetes API for kubectl get/watch namespaces and pods, auth whoami,
 * exec, logs and port-forward against one echo pod.
 */
export async function startStandinApiserver(opts: StandinApiserverOptions): Promise<StandinApiserver> {
  const host = opts.host ?? '127.0.0.1';
  const auth: AuthConfig = {
    tokens: opts.tokens,
    impersonators: new Set(opts.impersonators ?? Object.values(opts.tokens).map((t) => t.user)),
    clientCerts: opts.ca !== undefined,
  };
  const ctx: ApiContext = {
    cluster: opts.cluster,
    namespaces: new NamespaceStore(['default', 'kube-system', `${opts.cluster}-apps`]),
    pod: echoPod(opts.cluster, new Date()),
    serverAddress: '',
  };
  const requests: RecordedRequest[] = [];
  const rawSockets = new Set<Socket>();
  const tlsSockets = new Set<TLSSocket>();
  const webSockets = new Set<WebSocket>();
  const chosenProtocol = new WeakMap<IncomingMessage, string>();

  const tlsOptions = {
    cert: opts.cert,
    key: opts.key,
    ...(opts.ca !== undefined ? { ca: opts.ca, requestCert: true, rejectUnauthorized: false } : {}),
  };
  // Over HTTP/2, Node's compatibility API gives the handlers requests and responses shaped as HTTP/1.1's.
  const server =
    opts.http2 === false
      ? https.createServer({ ...tlsOptions, ALPNProtocols: ['http/1.1'] })
      : http2.createSecureServer({
          ...tlsOptions,
          allowHTTP1: true,
          // A Go apiserver takes 1 MiB of request headers in any number of lines (long Impersonate-Group lists); Node's HTTP/2 defaults are 64 KiB and 128 lines.
          maxHeaderListPairs: H2_MAX_HEADER_LINES,
          settings: { maxConcurrentStreams: H2_MAX_STREAMS, maxHeaderListSize: H2_MAX_HEADER_BYTES },
        });
  // Subprotocols are negotiated here, not by ws: ws rejects the offer
  // `SPDY/3.1+portforward.k8s.io` ("/" is not a token character), which
  // kubectl port-forward sends. The chosen one is added to the 101 response.
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  wss.on('headers', (headers: string[], req: IncomingMessage) => {
    const protocol = chosenProtocol.get(req);
    if (protocol) headers.push(`Sec-WebSocket-Protocol: ${protocol}`);
  });

  const record = (req: IncomingMessage, result: AuthResult | undefined, upgrade: boolean): void => {
    if (opts.onCredential) {
      for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
        const name = req.rawHeaders[i]!.toLowerCase();
        if (name === 'authorization' || name === 'proxy-authorization') opts.onCredential(name, req.rawHeaders[i + 1]!);
      }
    }
    // Headers as a Go apiserver has them: HTTP/2's pseudo-headers are not among them.
    const rawHeaders = req.httpVersionMajor === 2 ? req.rawHeaders.filter((_, i, all) => !all[i - (i % 2)]!.startsWith(':')) : req.rawHeaders;
    const headers = req.httpVersionMajor === 2 ? Object.fromEntries(Object.entries(req.headers).filter(([k]) => !k.startsWith(':'))) : req.headers;
    requests.push({
      method: req.method ?? '',
      path: req.url ?? '',
      httpVersion: req.httpVersion,
      headers: redactHeaders(headers),
      rawHeaders: redactRawHeaders(rawHeaders),
      user: result?.ok ? result.user.username : undefined,
      effectiveUser: result?.ok ? result.effective.username : undefined,
      upgrade,
      time: new Date(),
    });
    if (requests.length > MAX_RECORDED) requests.splice(0, requests.length - MAX_RECORDED);
  };

  server.on('connection', (socket: Socket) => {
    rawSockets.add(socket);
    socket.setNoDelay(true);
    socket.once('close', () => rawSockets.delete(socket));
  });
  server.on('secureConnection', (socket: TLSSocket) => {
    tlsSockets.add(socket);
    socket.once('close', () => tlsSockets.delete(socket));
  });
  server.on('tlsClientError', () => {
    // A client that fails the handshake just goes away; nothing to log.
  });

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    if (HEALTH.test(req.url ?? '') && (req.method === 'GET' || req.method === 'HEAD')) {
      record(req, undefined, false);
      return sendText(res, 200, 'ok'); // public, as with the real apiserver's default RBAC
    }
    const result = authenticate(req, auth);
    record(req, result, false);
    if (!result.ok) return sendStatus(res, result.code, result.message, result.details);
    handleApiRequest(req, res, ctx, result.effective).catch((err: unknown) => {
      if (!res.headersSent) sendStatus(res, 500, `internal error: ${(err as Error).message}`);
      else res.destroy();
    });
  });

  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => socket.destroy());
    const result = authenticate(req, auth);
    record(req, result, true);
    if (!result.ok) return rejectUpgrade(socket, result.code, result.message, result.details);

    const url = new URL(req.url ?? '/', 'https://standin.invalid');
    const match = STREAMING.exec(url.pathname);
    if (!match) return rejectUpgrade(socket, 404, 'the server could not find the requested resource', {});
    const [, namespace = '', name = '', action = ''] = match;
    if (!podsIn(ctx.pod, namespace).some((p) => p.metadata.name === name)) {
      return rejectUpgrade(socket, ...notFound('pods', name));
    }
    if ((req.headers.upgrade ?? '').toLowerCase() !== 'websocket') {
      const what = req.headers.upgrade ?? '';
      return rejectUpgrade(socket, 400, `upgrade to "${what}" is not supported by the stand-in apiserver: use WebSocket`);
    }
    const supported = action === 'portforward' ? PORTFORWARD_PROTOCOLS : EXEC_PROTOCOLS;
    const offered = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((s) => s.trim()).filter(Boolean);
    const chosen = supported.find((p) => offered.includes(p));
    if (!chosen && (offered.length > 0 || action !== 'portforward')) {
      return rejectUpgrade(socket, 400, `no supported subprotocol offered; supported: ${supported.join(', ')}`);
    }
    if (chosen) chosenProtocol.set(req, chosen);
    delete req.headers['sec-websocket-protocol'];

    wss.handleUpgrade(req, socket, head, (ws) => {
      webSockets.add(ws);
      ws.on('close', () => webSockets.delete(ws));
      ws.on('error', () => ws.terminate());
      if (action === 'portforward') return runPortForwardSession(ws, chosen, url.searchParams);
      const query = new URLSearchParams(url.searchParams);
      if (action === 'attach') query.delete('command'); // attach talks to the echo process itself
      runExecSession(ws, chosen ?? '', query);
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const hostInUrl = host.includes(':') ? `[${host}]` : host;
  ctx.serverAddress = `${hostInUrl}:${port}`;

  let closing: Promise<void> | undefined;
  const close = async (): Promise<void> => {
    const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const ws of webSockets) ws.terminate();
    wss.close();
    if ('closeAllConnections' in server) server.closeAllConnections();
    const open = [...tlsSockets].map((s) => new Promise<void>((resolve) => s.once('close', () => resolve())));
    for (const socket of tlsSockets) socket.destroy();
    for (const socket of rawSockets) socket.destroy();
    await Promise.all([stopped, ...open]);
  };

  return {
    url: `https://${hostInUrl}:${port}`,
    port,
    requests,
    close: () => (closing ??= close()),
    addNamespace: (name, metadata) => void ctx.namespaces.add(name, metadata),
    deleteNamespace: (name: string) => void ctx.namespaces.delete(name),
    get connections() {
      return tlsSockets.size;
    },
  };
}

function redact(name: string, value: string): string {
  const lower = name.toLowerCase();
  if (lower !== 'authorization' && lower !== 'proxy-authorization') return value;
  const scheme = value.split(/\s+/)[0] ?? '';
  return `${scheme} [redacted]`;
}

function redactHeaders(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const copy: IncomingHttpHeaders = { ...headers };
  for (const name of ['authorization', 'proxy-authorization']) {
    const value = copy[name];
    if (typeof value === 'string') copy[name] = redact(name, value);
  }
  return copy;
}

function redactRawHeaders(raw: string[]): string[] {
  return raw.map((value, i) => (i % 2 === 1 ? redact(raw[i - 1] ?? '', value) : value));
}
