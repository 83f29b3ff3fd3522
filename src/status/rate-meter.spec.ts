import { describe, expect, it } from 'vitest';
import { RateMeter } from './rate-meter';

describe('RateMeter', () => {
  it('answers the average until a window has passed, then the rate over the last window', () => {
    const m = new RateMeter(2000);
    expect(m.observe('a', 0, 0, 123)).toBe(123);
    expect(m.observe('a', 1000, 1000, 456)).toBe(456); // less than a window: the average
    expect(m.observe('a', 4000, 2000, 0)).toBe(2000); // 4000 bytes in 2 s
    expect(m.observe('a', 4100, 2500, 0)).toBe(2000); // kept until the next window
    expect(m.observe('a', 4100, 4000, 0)).toBe(50); // 100 bytes in 2 s: it slowed down
  });

  it('gives the same figure however often it is asked', () => {
    const often = new RateMeter(2000);
    const rarely = new RateMeter(2000);
    often.observe('a', 0, 0, 0);
    rarely.observe('a', 0, 0, 0);
    for (let t = 100; t <= 2000; t += 100) often.observe('a', t * 5, t, 0);
    expect(often.observe('a', 10_000, 2000, 0)).toBe(rarely.observe('a', 10_000, 2000, 0));
  });

  it('forgets keys that are no longer live', () => {
    const m = new RateMeter(1000);
    m.observe('a', 0, 0, 0);
    m.observe('a', 1000, 1000, 0);
    m.retain(new Set(['b']));
    expect(m.observe('a', 5000, 1500, 7)).toBe(7); // seen for the first time again
  });
});
