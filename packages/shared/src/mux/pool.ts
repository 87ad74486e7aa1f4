/**
 * Reusable message buffers, shared by every session of the process.
 *
 * A bulk stream frames one message per ~256 KiB. Allocating each costs more
 * than the copy into it: V8 starts a major GC whenever ~64 MiB of new
 * off-heap memory has been allocated since the last one, so a tunnel moving
 * 250 MB/s collected ~15 times a second. Sessions borrow a buffer for the
 * life of one send and give it back when the transport is done with it.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];

  constructor(
    readonly size: number,
    /** Most idle buffers kept; more are left to the GC. */
    private readonly keep: number,
  ) {}

  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafeSlow(this.size);
  }

  give(buf: Buffer): void {
    if (this.free.length < this.keep) this.free.push(buf);
  }

  /** Idle buffers held (for tests). */
  get idle(): number {
    return this.free.length;
  }
}

const pools = new Map<number, BufferPool>();

/** The process-wide pool of buffers of `size` bytes. */
export function poolFor(size: number): BufferPool {
  let pool = pools.get(size);
  if (!pool) pools.set(size, (pool = new BufferPool(size, 16)));
  return pool;
}
