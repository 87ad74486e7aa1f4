import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';

/**
 * Answers on a raw socket (CONNECT, upgrades, parse errors) with a status
 * line, a one-line plain-text reason, and closes the connection.
 */
export function respondRaw(socket: Duplex, status: number, reason: string, headers: Record<string, string> = {}): void {
  writeAndClose(socket, status, 'text/plain; charset=utf-8', `${reason.replace(/[\r\n]+/g, ' ')}\n`, headers);
}

/** Writes a whole response with `body` on a raw socket and ends it. */
export function writeAndClose(socket: Duplex, status: number, contentType: string, body: string, headers: Record<string, string> = {}): void {
  if (socket.destroyed || !socket.writable) return;
  const lines = [
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Unknown'}`,
    `Content-Type: ${contentType}`,
    `Content-Length: ${Buffer.byteLength(body)}`,
    'Connection: close',
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ];
  socket.end(`${lines.join('\r\n')}\r\n\r\n${body}`);
}

/** Tracks a server's sockets so that close() can end upgraded and CONNECT ones too. */
export class SocketSet {
  private readonly sockets = new Set<Duplex>();

  add(socket: Duplex): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
  }

  get size(): number {
    return this.sockets.size;
  }

  destroyAll(): void {
    for (const s of this.sockets) s.destroy();
  }
}
