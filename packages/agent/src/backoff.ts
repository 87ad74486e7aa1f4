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

/** Longest Retry-After an agent honours (seconds): a wrong or hostile value must not park it for hours. */
const MAX_RETRY_AFTER_S = 300;

/**
 * The wait a 503 with `Retry-After: S` asks for, with jitter: uniform in
 * [S, 2S] seconds, so that agents refused together do not come back
 * together. Undefined when the header is missing or not a number of seconds.
 */
export function retryAfterMs(header: string | string[] | undefined, random: () => number = Math.random): number | undefined {
  const text = Array.isArray(header) ? header[0] : header;
  if (text === undefined || !/^\s*\d+\s*$/.test(text)) return undefined;
  const seconds = Math.min(Number(text), MAX_RETRY_AFTER_S);
  return Math.round(seconds * 1000 * (1 + random()));
}
