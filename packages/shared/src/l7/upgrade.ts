import type { ClientRequest, IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import type { Duplex } from 'node:stream';
import { respondRaw } from '../http/respond.js';

/**
 * Relays an upgrade request (WebSocket or SPDY: exec, attach, port-forward)
 * that `out` has been built for (not yet ended). A 101 answer is passed
 * through and the two connections are joined. Any other answer is delivered
 * and then both connections are closed: nothing the client sends after it
 * reaches the upstream (CVE-2018-1002105). Redirects are never followed.
 * `done` gets the upstream's status once the exchange is over.
 */
export function relayUpgrade(socket: Duplex, head: Buffer, out: ClientRequest, done: (status: number) => void): void {
  let upstreamSocket: Duplex | undefined;
  let status = 502;
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    if (!socket.destroyed) socket.destroy();
    upstreamSocket?.destroy();
    out.destroy();
    done(status);
  };
  socket.on('error', () => {});
  socket.once('close', finish);
  out.on('error', () => {
    if (!socket.destroyed && socket.writable && status === 502 && !upstreamSocket) respondRaw(socket, 502, 'upstream connection failed');
    else finish();
  });
  out.on('upgrade', (res, upstream: Duplex, upHead: Buffer) => {
    status = res.statusCode ?? 101;
    upstreamSocket = upstream;
    upstream.on('error', () => {});
    socket.write(responseHead(res, false));
    if (upHead.length > 0) socket.write(upHead);
    if (head.length > 0) upstream.write(head);
    upstream.pipe(socket);
    socket.pipe(upstream);
    upstream.once('close', finish);
  });
  out.on('response', (res) => {
    // Not upgraded: deliver the answer, then close. The client's connection
    // is never joined to the upstream's.
    status = res.statusCode ?? 0;
    socket.write(responseHead(res, true));
    res.pipe(socket);
    res.once('end', () => out.destroy());
    res.once('error', finish);
  });
  out.end();
}

/** A response's status line and headers, as received (with Connection: close when closing). */
export function responseHead(res: IncomingMessage, closing: boolean): string {
  const lines = [`HTTP/1.1 ${res.statusCode} ${res.statusMessage ?? ''}`];
  for (let i = 0; i < res.rawHeaders.length; i += 2) {
    const lower = res.rawHeaders[i]!.toLowerCase();
    if (closing && (lower === 'connection' || lower === 'transfer-encoding' || lower === 'keep-alive')) continue;
    lines.push(`${res.rawHeaders[i]}: ${res.rawHeaders[i + 1]}`);
  }
  if (closing) lines.push('Connection: close');
  return lines.join('\r\n') + '\r\n\r\n';
}

/**
 * The headers of an upgrade request sent on: `headers` (already stripped of
 * caller credentials) without body framing, which an upgrade request never
 * has, plus Connection: Upgrade and the protocol asked for.
 */
export function upgradeRequestHeaders(headers: OutgoingHttpHeaders, upgrade: string | undefined): OutgoingHttpHeaders {
  const { 'content-length': _length, 'transfer-encoding': _encoding, ...rest } = headers;
  return { ...rest, connection: 'Upgrade', upgrade };
}
