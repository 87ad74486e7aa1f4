/**
 * The states of one dial of a server: the WebSocket handshake, then either a
 * tunnel or the wait before the next dial.
 *
 *   connecting --101--------------> open      (final: the tunnel is the session's from here)
 *   connecting --HTTP status------> answered  (the server's reason is being read)
 *   connecting --error, close-----> failed    (final)
 *   answered   --reason read, error-> failed  (final)
 */
export type DialState = 'connecting' | 'answered' | 'open' | 'failed';

/** Every move a dial may make; any other is ignored (events that come after the outcome is known). */
const MOVES: Readonly<Record<DialState, readonly DialState[]>> = {
  connecting: ['answered', 'open', 'failed'],
  answered: ['failed'],
  open: [],
  failed: [],
};

const isFinal = (state: DialState) => MOVES[state].length === 0;

/**
 * One dial attempt. The WebSocket's handlers report what happened with
 * `to`; the first move to a final state ends the attempt, once, with the
 * wait before the next dial.
 */
export class DialAttempt {
  private current: DialState = 'connecting';

  /** `onEnd` runs once, when the attempt reaches a final state. */
  constructor(private readonly onEnd: (nextDelayMs: number) => void) {}

  get state(): DialState {
    return this.current;
  }

  /** True once the attempt is open or failed. */
  get ended(): boolean {
    return isFinal(this.current);
  }

  /**
   * Moves to `next` if that move is allowed from the current state, and
   * returns whether it moved. On a move to a final state, `delayMs` gives
   * the wait before the next dial (0 if absent); it is called only then, so
   * a wait that is not taken is never drawn from a backoff.
   */
  to(next: DialState, delayMs?: () => number): boolean {
    if (!MOVES[this.current].includes(next)) return false;
    this.current = next;
    if (isFinal(next)) this.onEnd(delayMs ? delayMs() : 0);
    return true;
  }
}
