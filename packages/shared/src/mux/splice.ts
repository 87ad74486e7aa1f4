import type { Duplex } from 'node:stream';
import { TunnelError } from '../errors.js';
import type { MuxStream } from './stream.js';

/**
 * Joins a socket and a tunnel stream both ways, keeping half-close (an end
 * on one side is a FIN on the other) and turning an abort on either side
 * into an abort on the other: RESET toward the tunnel, destroy toward the
 * socket. Resolves once both are closed.
 */
export function splice(socket: Duplex, stream: MuxStream): Promise<void> {
  socket.pipe(stream);
  // The DATA frames of one tunnel message arrive in one turn of the event
  // loop: cork the socket for that turn so they leave in one write (one
  // writev, fewer TLS records and syscalls) instead of one write each.
  let corked = false;
  const uncork = () => {
    corked = false;
    socket.uncork();
  };
  stream.on('data', () => {
    if (corked) return;
    corked = true;
    socket.cork();
    process.nextTick(uncork);
  });
  stream.pipe(socket);
  socket.on('error', () => {}); // reported through 'close' below
  const socketClosed = new Promise<void>((resolve) =>
    socket.once('close', () => {
      if (!stream.destroyed && !(stream.writableEnded && stream.readableEnded)) {
        const err = (socket as Duplex & { errored?: Error | null }).errored;
        stream.destroy(new TunnelError(err ? 'UPSTREAM_RESET' : 'CANCELLED', err ? 'peer connection reset' : 'peer connection closed'));
      }
      resolve();
    }),
  );
  const streamClosed = new Promise<void>((resolve) =>
    stream.once('close', () => {
      if (stream.errored && !socket.destroyed) socket.destroy();
      resolve();
    }),
  );
  return Promise.all([socketClosed, streamClosed]).then(() => undefined);
}
