import { describe, expect, it } from 'vitest';
import { Backoff } from '../src/backoff.js';

describe('Backoff', () => {
  it('caps double from the initial wait up to the maximum; the wait is the jitter share of the cap', () => {
    const top = new Backoff(100, 1000, () => 1);
    expect(Array.from({ length: 6 }, () => top.next())).toEqual([100, 200, 400, 800, 1000, 1000]);
    const half = new Backoff(100, 1000, () => 0.5);
    expect(Array.from({ length: 5 }, () => half.next())).toEqual([50, 100, 200, 400, 500]);
    expect(new Backoff(100, 1000, () => 0).next()).toBe(0);
  });

  it('reset starts from the initial wait again', () => {
    const b = new Backoff(10, 1000, () => 1);
    b.next();
    b.next();
    b.reset();
    expect(b.next()).toBe(10);
  });

  it('max() is between half and all of the maximum (a refusal the operator must fix)', () => {
    expect(new Backoff(10, 1000, () => 0).max()).toBe(500);
    expect(new Backoff(10, 1000, () => 1).max()).toBe(1000);
  });

  it('many attempts never overflow the cap', () => {
    const b = new Backoff(1, 30_000, () => 1);
    let last = 0;
    for (let i = 0; i < 200; i++) last = b.next();
    expect(last).toBe(30_000);
  });
});
