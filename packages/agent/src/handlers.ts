import net from 'node:net';
import { APISERVER_TARGET, TunnelError, dialReason, parseHostPort, splice, unbracketHost, type IncomingOpen, type Logger } from '@kubetunnel/shared';
import type { ImpersonatingProxy } from './http-handler.js';

export interface HandlerDeps {
  apiserver: URL;
  allowDest: ReadonlySet<string>;
  dialTimeoutMs: number;
  /** Completes L7 (`http`) streams. */
  l7: ImpersonatingProxy;
  log: Logger;
}

/**
 * What the agent does with an OPEN. It never dials arbitrary addresses: only
 * its apiserver and the exact host:port entries of its allow list; any other
 * target is refused with TARGET_NOT_ALLOWED and no connection is made.
 */
export function handleOpen(deps: HandlerDeps, incoming: IncomingOpen, counters: { open: number }): void {
  const { request } = incoming;
  if (request.kind === 'http') return handleHttp(deps, incoming, counters);
  let dest: { host: string; port: number } | undefined;
  if (request.target === APISERVER_TARGET) {
    dest = { host: deps.apiserver.hostname, port: Number(deps.apiserver.port || 443) };
  } else if (deps.allowDest.has(request.target)) {
    dest = parseHostPort(request.target);
  }
  if (dest === undefined) {
    deps.log.warn({ target: request.target, streamId: incoming.streamId }, 'refused OPEN: target not allowed');
    return incoming.reject('TARGET_NOT_ALLOWED', `target ${request.target} is not allowed by this agent`);
  }
  dial(deps, incoming, { host: unbracketHost(dest.host), port: dest.port }, counters);
}

function dial(deps: HandlerDeps, incoming: IncomingOpen, dest: { host: string; port: number }, counters: { open: number }): void {
  const socket = net.connect({ host: dest.host, port: dest.port, allowHalfOpen: true, noDelay: true });
  const timer = setTimeout(() => socket.destroy(new TunnelError('DIAL_TIMEOUT', `no connection to ${dest.host}:${dest.port} within ${deps.dialTimeoutMs} ms`)), deps.dialTimeoutMs);
  const onAbort = () => socket.destroy();
  incoming.signal.addEventListener('abort', onAbort, { once: true });
  const settle = () => {
    clearTimeout(timer);
    incoming.signal.removeEventListener('abort', onAbort);
  };
  let connected = false;
  socket.once('connect', () => {
    connected = true;
    settle();
    let stream;
    try {
      stream = incoming.accept();
    } catch {
      socket.destroy(); // the opener gave up meanwhile
      return;
    }
    counters.open++;
    void splice(socket, stream).then(() => counters.open--);
  });
  socket.once('error', (err) => {
    if (!connected) {
      settle();
      const reason = dialReason(err);
      deps.log.info({ target: `${dest.host}:${dest.port}`, reason }, 'dial failed');
      incoming.reject(reason, err.message);
    }
  });
}

/** L7: the stream carries HTTP/1.1 requests, completed with the agent's credentials and impersonation. */
function handleHttp(deps: HandlerDeps, incoming: IncomingOpen, counters: { open: number }): void {
  const { identity } = incoming.request;
  if (!identity) return incoming.reject('BAD_OPEN', 'an http stream needs an identity');
  const stream = incoming.accept();
  counters.open++;
  stream.once('close', () => counters.open--);
  deps.l7.handle(stream, identity);
}
