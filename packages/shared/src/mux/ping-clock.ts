/**
 * The clock of the sessions' PING ticks: one timer for every session of the
 * process with the same interval, instead of a timer each.
 *
 * A tick costs little; waking the process for it costs more. An idle server
 * with thousands of tunnels, each on its own timer, woke once per PING and
 * spent most of its idle CPU there (bench/src/fleet.ts, docs/benchmarks.md).
 * Here the interval is cut into slots a tick apart (about 100 ms); the clock
 * visits one slot per tick and ticks every session in it, so the PINGs due
 * within the same tick leave in one wake-up, and their PONGs come back
 * together. Each session still ticks once per interval: it joins the slot
 * visited last, so its first tick comes an interval later, less at most one
 * slot's width (a tenth of the interval for short ones).
 */

/** The widest slot. */
const MAX_SLOT_MS = 100;
/** The fewest slots per interval (so a short interval keeps its precision). */
const MIN_SLOTS = 10;

class Wheel {
  private readonly slots: Array<Set<() => void>>;
  /** The slot the next turn visits. */
  private at = 0;
  private members = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly intervalMs: number,
    private readonly onEmpty: () => void,
  ) {
    const count = Math.max(MIN_SLOTS, Math.ceil(intervalMs / MAX_SLOT_MS));
    this.slots = Array.from({ length: count }, () => new Set());
  }

  add(tick: () => void): () => void {
    const slot = this.slots[(this.at + this.slots.length - 1) % this.slots.length]!;
    slot.add(tick);
    if (this.members++ === 0) this.timer = setInterval(() => this.turn(), this.intervalMs / this.slots.length);
    return () => {
      if (!slot.delete(tick) || --this.members > 0) return;
      clearInterval(this.timer);
      this.onEmpty();
    };
  }

  private turn(): void {
    const slot = this.slots[this.at]!;
    this.at = (this.at + 1) % this.slots.length;
    for (const tick of slot) tick();
  }
}

const wheels = new Map<number, Wheel>();

/**
 * Calls `tick` once every `intervalMs`, the first time about an interval from
 * now, until the function returned is called. The clock's timer runs only
 * while some session of that interval needs it.
 */
export function everyInterval(intervalMs: number, tick: () => void): () => void {
  let wheel = wheels.get(intervalMs);
  if (!wheel) {
    wheel = new Wheel(intervalMs, () => wheels.delete(intervalMs));
    wheels.set(intervalMs, wheel);
  }
  return wheel.add(tick);
}
