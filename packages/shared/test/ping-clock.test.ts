/**
 * The PING clock (src/mux/ping-clock.ts): sessions with the same interval
 * share one timer, each still ticks once per interval, and the timer stops
 * with the last session. Fake timers: the test is about when ticks come.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { everyInterval } from '../src/mux/ping-clock.js';

describe('ping clock', () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: 0 });
  });
  afterEach(() => {
    expect(vi.getTimerCount()).toBe(0);
    vi.useRealTimers();
  });

  it('runs one timer for every session of an interval, and none once they stop', () => {
    const stops = Array.from({ length: 1000 }, () => everyInterval(10_000, () => {}));
    expect(vi.getTimerCount()).toBe(1);
    const other = everyInterval(30_000, () => {});
    expect(vi.getTimerCount()).toBe(2);
    other();
    for (const stop of stops.slice(1)) stop();
    expect(vi.getTimerCount()).toBe(1);
    stops[0]!();
    stops[0]!(); // a second stop changes nothing
    expect(vi.getTimerCount()).toBe(0);
  });

  it('ticks each session once per interval, the first about an interval after it joined', () => {
    const at: Record<string, number[]> = { a: [], b: [], c: [] };
    const stopA = everyInterval(1000, () => at.a!.push(Date.now()));
    vi.advanceTimersByTime(1050);
    const stopB = everyInterval(1000, () => at.b!.push(Date.now()));
    vi.advanceTimersByTime(330);
    const stopC = everyInterval(1000, () => at.c!.push(Date.now()));
    vi.advanceTimersByTime(10_000);
    // a joined at 0, b at 1,050, c at 1,380; slots are 100 ms wide.
    expect(at.a).toEqual([1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10_000, 11_000]);
    expect(at.b![0]! - 1050).toBeGreaterThan(900);
    expect(at.b![0]! - 1050).toBeLessThanOrEqual(1000);
    expect(at.c![0]! - 1380).toBeGreaterThan(900);
    expect(at.c![0]! - 1380).toBeLessThanOrEqual(1000);
    for (const ticks of [at.b!, at.c!]) for (let i = 1; i < ticks.length; i++) expect(ticks[i]! - ticks[i - 1]!).toBe(1000);
    // b and c joined in different slots: their PINGs are spread, not all at once.
    expect(at.b![0]! % 1000).not.toBe(at.c![0]! % 1000);
    stopA();
    stopB();
    stopC();
  });

  it('a session that stops another of its slot during a tick: that one is not ticked', () => {
    const ticked: string[] = [];
    let stopSecond: () => void = () => {};
    const stopFirst = everyInterval(1000, () => {
      ticked.push('first');
      stopSecond();
    });
    stopSecond = everyInterval(1000, () => ticked.push('second'));
    vi.advanceTimersByTime(3000);
    expect(ticked).toEqual(['first', 'first', 'first']);
    stopFirst();
  });
});
