/**
 * Streams (open or dialing) one user may hold at once, over every frontend
 * and cluster of this server.
 */
export class UserStreamLimit {
  private readonly held = new Map<string, number>();

  constructor(readonly max: number) {}

  /** Streams `user` holds now. */
  heldBy(user: string): number {
    return this.held.get(user) ?? 0;
  }

  /** Users holding at least one stream (tests assert it returns to 0). */
  get size(): number {
    return this.held.size;
  }

  /**
   * Takes one of `user`'s streams; undefined when the user holds `max`
   * already. The returned function gives it back (the first call does;
   * later ones do nothing).
   */
  acquire(user: string): (() => void) | undefined {
    const n = this.heldBy(user);
    if (n >= this.max) return undefined;
    this.held.set(user, n + 1);
    let holding = true;
    return () => {
      if (!holding) return;
      holding = false;
      const left = this.heldBy(user) - 1;
      if (left > 0) this.held.set(user, left);
      else this.held.delete(user);
    };
  }
}
