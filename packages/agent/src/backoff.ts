/**
 * Exponential backoff with full jitter: the n-th wait is uniform in
 * [0, min(max, initial * 2^n)], so a fleet of agents that lost the same
 * server does not come back in lockstep.
 */
export class Backoff {
  private attempt = 0;

  constructor(
    private readonly initialMs: number,
    private readonly maxMs: number,
    private readonly random: () => number = Math.random,
  ) {}

  next(): number {
    const cap = Math.min(this.maxMs, this.initialMs * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return Math.round(this.random() * cap);
  }

  /** The longest wait (used after a refusal the operator must fix). */
  max(): number {
    return Math.round(this.maxMs * (0.5 + this.random() / 2));
  }

  reset(): void {
    this.attempt = 0;
  }
}
