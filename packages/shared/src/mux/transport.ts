import { EventEmitter } from 'node:events';

/**
 * What a session needs from the connection under it: whole binary messages
 * both ways, a completion callback per message (for back pressure), and a
 * close signal. A WebSocket is one; an in-memory pair is another.
 *
 * Events: 'message' (Buffer), 'close' (Error | undefined).
 */
export interface FrameTransport extends EventEmitter {
  /** Sends one message; `cb` runs once it has left this process (or failed). */
  send(message: Buffer, cb: (err?: Error) => void): void;
  /** Closes gracefully; 'close' follows. */
  close(code?: number, reason?: string): void;
  /** Closes at once. */
  terminate(): void;
}

/**
 * An in-memory transport pair, for tests: messages arrive on a later
 * turn of the event loop, and send callbacks run after delivery.
 */
export class MemoryTransport extends EventEmitter implements FrameTransport {
  peer: MemoryTransport | undefined;
  private closed = false;
  private gone = false;

  static pair(): [MemoryTransport, MemoryTransport] {
    const a = new MemoryTransport();
    const b = new MemoryTransport();
    a.peer = b;
    b.peer = a;
    return [a, b];
  }

  send(message: Buffer, cb: (err?: Error) => void): void {
    if (this.closed) {
      setImmediate(cb, new Error('transport closed'));
      return;
    }
    const peer = this.peer!;
    // Copy: the receiver may keep slices while the sender reuses its buffer.
    const copy = Buffer.from(message);
    setImmediate(() => {
      if (!peer.gone) peer.emit('message', copy);
      cb();
    });
  }

  close(): void {
    this.shutdown();
  }

  terminate(): void {
    this.shutdown();
  }

  /** Simulates the peer vanishing: nothing more is delivered either way, and no close is seen. */
  blackhole(): void {
    const peer = this.peer!;
    this.send = (_m, cb) => setImmediate(cb);
    peer.send = (_m, cb) => setImmediate(cb);
  }

  private shutdown(): void {
    // No new sends either way; messages already in flight are still
    // delivered (they were queued first), then each side sees 'close'.
    for (const t of [this, this.peer!]) {
      if (t.closed) continue;
      t.closed = true;
      setImmediate(() => {
        t.gone = true;
        t.emit('close', undefined);
      });
    }
  }
}
