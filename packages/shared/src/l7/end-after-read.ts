import { Duplex } from 'node:stream';

/**
 * A connection as undici is given it: the same bytes both ways, except that
 * the end of what the peer sent is seen only by a read of its own, after
 * every byte before it was read.
 *
 * Why: undici's HTTP/1.1 client pauses its parser while the caller does not
 * take an answer's body (backpressure), and when the answer is one the
 * connection ends after (Connection: close, HTTP/1.0, a body ended by
 * closing), its listener for the socket's 'end' asserts that the parser is
 * not paused: the assertion throws from an event listener and ends the
 * process (nodejs/undici#5360, in every 6.x and 7.x release). A Readable
 * emits 'end' right after the read that took its last bytes if the end had
 * arrived with them, as it does when a peer writes its answer and closes.
 * Here the end is pushed only once a read finds no bytes left (on the next
 * tick), so it is announced with 'readable', which a paused parser does not
 * read, and 'end' comes when the parser reads again after resuming; and
 * its 'close' (undici asserts the same there) waits for that 'end'. The
 * handler must not pause on the empty chunk undici may pass it on resuming
 * (ResponseRelay does not).
 */
export class EndAfterRead extends Duplex {
  /** The peer ended while bytes were still waiting to be read. */
  private endHeld = false;

  /** `inner`: the connection itself. */
  constructor(readonly inner: Duplex) {
    super({ allowHalfOpen: true });
    inner.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) inner.pause();
    });
    inner.once('end', () => {
      if (this.readableLength > 0) this.endHeld = true;
      else this.push(null);
    });
    inner.once('error', (err: Error) => this.destroy(err));
    // A connection that closed after its peer's end closes here once that end was read too (undici's
    // 'close' listener asserts as its 'end' listener does); one that closed before it is an error.
    inner.once('close', () => {
      if (!inner.readableEnded) this.destroy(new Error('the connection closed before the end of its answer'));
      else if (this.readableEnded) this.destroy();
      else this.once('end', () => this.destroy());
    });
  }

  /**
   * The end, held while bytes waited, is pushed on the tick after the read
   * that took the last of them, if they are still gone then: undici puts
   * back (unshift) what its parser did not take when it paused.
   */
  override read(size?: number): Buffer | null {
    const chunk = super.read(size) as Buffer | null;
    if (this.endHeld && this.readableLength === 0) {
      this.endHeld = false;
      process.nextTick(() => {
        if (this.readableLength === 0) this.push(null);
        else this.endHeld = true;
      });
    }
    return chunk;
  }

  override _read(): void {
    this.inner.resume();
  }

  override _write(chunk: Buffer, encoding: BufferEncoding, done: (err?: Error | null) => void): void {
    this.inner.write(chunk, encoding, done);
  }

  override _writev(chunks: Array<{ chunk: Buffer; encoding: BufferEncoding }>, done: (err?: Error | null) => void): void {
    this.inner.cork();
    for (let i = 0; i < chunks.length - 1; i++) this.inner.write(chunks[i]!.chunk);
    this.inner.write(chunks[chunks.length - 1]!.chunk, done);
    this.inner.uncork();
  }

  override _final(done: (err?: Error | null) => void): void {
    this.inner.end(done);
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    this.inner.destroy(err ?? undefined);
    done(err);
  }
}
