import { describe, expect, it } from 'vitest';
import { Backoff, retryAfterMs } from '../src/backoff.js';

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

describe('retryAfterMs', () => {
  it('is the Retry-After seconds with jitter up to twice as long', () => {
    expect(retryAfterMs('3', () => 0)).toBe(3000);
    expect(retryAfterMs('3', () => 1)).toBe(6000);
    expect(retryAfterMs(' 2 ', () => 0.5)).toBe(3000);
    expect(retryAfterMs(['1', '9'], () => 0)).toBe(1000);
  });

  it('is undefined without a number of seconds, and capped at five minutes', () => {
    expect(retryAfterMs(undefined)).toBeUndefined();
    expect(retryAfterMs('soon')).toBeUndefined();
    expect(retryAfterMs('Wed, 21 Oct 2026 07:28:00 GMT')).toBeUndefined();
    expect(retryAfterMs('-1')).toBeUndefined();
    expect(retryAfterMs('99999999', () => 0)).toBe(300_000);
  });
});
