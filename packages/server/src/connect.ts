import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { respondRaw, splice } from '@kubetunnel/shared';
import { authenticate } from './auth.js';
import type { FrontendDeps } from './deps.js';
import { dialCluster } from './dial.js';
import { httpAnswer, type Refusal } from './refusal.js';
import { resolveConnect } from './routing/resolve.js';
import { tcpTarget } from './routing/target.js';

const PROXY_AUTHENTICATE = 'Basic realm="kubetunnel", Bearer realm="kubetunnel"';

/** Answers a refused CONNECT: the status of its reason (407 with Proxy-Authenticate when unauthenticated) and the one-line message. */
function refuseConnect(socket: Duplex, r: Refusal): void {
  const { status, headers } = httpAnswer(r, 'proxy');
  respondRaw(socket, status, r.message, status === 407 ? { ...headers, 'Proxy-Authenticate': PROXY_AUTHENTICATE } : headers);
}

/**
 * CONNECT: authenticate, find the cluster, open a tunnel stream to the
 * apiserver (or an allow-listed host:port named exactly), answer 200 only
 * once the agent has reached it, then splice bytes both ways.
 */
export async function handleConnect(deps: FrontendDeps, req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
  socket.on('error', () => {});
  const auth = authenticate(req.socket as TLSSocket, req.headers['proxy-authorization'], deps.tokens);
  if (!auth.ok) {
    deps.metrics.refused('connect', auth.refusal.reason);
    return refuseConnect(socket, auth.refusal);
  }
  const r = resolveConnect(req, deps.registry, deps.clusterDomain);
  if (!r.ok) {
    deps.metrics.refused('connect', r.refusal.reason);
    return refuseConnect(socket, r.refusal);
  }
  const target = tcpTarget(deps.registry, r);

  // The client may leave while the agent dials: abandon the dial then.
  const gone = new AbortController();
  const onClose = () => gone.abort();
  socket.once('close', onClose);
  const result = await dialCluster(deps, {
    cluster: r.cluster,
    identity: auth.identity,
    request: { kind: 'tcp', target },
    frontend: 'connect',
    signal: gone.signal,
  });
  socket.off('close', onClose);
  const log = deps.log.child({ frontend: 'connect', cluster: r.cluster, user: auth.identity.user, target });
  if (!result.ok) {
    log.info({ status: httpAnswer(result.refusal, 'proxy').status, reason: result.refusal.message }, 'CONNECT refused');
    return refuseConnect(socket, result.refusal);
  }
  const { stream, tunnel } = result;
  if (socket.destroyed) {
    stream.destroy();
    return;
  }
  const slog = log.child({ streamId: stream.id, agentId: tunnel.agentId });
  slog.debug('CONNECT established');
  socket.write('HTTP/1.1 200 Connection established\r\n\r\n');
  if (head.length > 0) stream.write(head);
  const started = performance.now();
  await splice(socket, stream);
  slog.info(
    { bytesIn: stream.bytesIn, bytesOut: stream.bytesOut, ms: Math.round(performance.now() - started), error: stream.errored?.message },
    'CONNECT closed',
  );
}
