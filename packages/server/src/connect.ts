import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { respondRaw, splice, type Logger } from '@kubetunnel/shared';
import { authenticate, basicUserFromAuthorization, type TokenIndex } from './auth.js';
import { dialCluster, type DialDeps } from './dial.js';
import type { ClusterRegistry } from './registry.js';
import { resolveCluster, tcpTarget } from './resolve.js';

export interface ConnectDeps extends DialDeps {
  registry: ClusterRegistry;
  tokens: TokenIndex;
  clusterDomain?: string;
  log: Logger;
}

const PROXY_AUTHENTICATE = 'Basic realm="kubetunnel", Bearer realm="kubetunnel"';

/**
 * CONNECT: authenticate, find the cluster, open a tunnel stream to the
 * apiserver (or an allow-listed host:port named exactly), answer 200 only
 * once the agent has reached it, then splice bytes both ways.
 */
export async function handleConnect(deps: ConnectDeps, req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
  socket.on('error', () => {});
  const auth = authenticate(req.socket as TLSSocket, req.headers['proxy-authorization'], deps.tokens);
  if (!auth.ok) {
    deps.metrics.failures.inc({ frontend: 'connect', reason: 'UNAUTHENTICATED' });
    return respondRaw(socket, 407, auth.reason, { 'Proxy-Authenticate': PROXY_AUTHENTICATE });
  }
  const r = resolveCluster(
    req.url,
    req.headers['x-cluster-name'],
    (n) => deps.registry.get(n) !== undefined,
    deps.clusterDomain,
    basicUserFromAuthorization(req.headers['proxy-authorization']),
  );
  if (!r.ok) {
    deps.metrics.failures.inc({ frontend: 'connect', reason: 'BAD_REQUEST' });
    return respondRaw(socket, r.status, r.reason);
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
    log.info({ status: result.status, reason: result.reason }, 'CONNECT refused');
    return respondRaw(socket, result.status, result.reason, result.retryAfter ? { 'Retry-After': String(result.retryAfter) } : {});
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
