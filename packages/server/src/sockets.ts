import type { Duplex } from 'node:stream';

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
