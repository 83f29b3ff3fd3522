import { describe, expect, it } from 'vitest';
import { NegativeCache } from './negative-cache';

describe('NegativeCache', () => {
  it('remembers a hash for the TTL, then forgets it', () => {
    let now = 0;
    const c = new NegativeCache(60_000, 10, () => now);
    c.add('a');
    expect(c.has('a')).toBe(true);
    now += 59_999;
    expect(c.has('a')).toBe(true);
    now += 1;
    expect(c.has('a')).toBe(false);
    expect(c.size).toBe(0);
  });

  it('forgets on demand (a positive answer or an upload)', () => {
    const c = new NegativeCache(60_000, 10);
    c.add('a');
    c.forget('a');
    expect(c.has('a')).toBe(false);
  });

  it('holds at most maxEntries, dropping the oldest', () => {
    const c = new NegativeCache(60_000, 3);
    for (const h of ['a', 'b', 'c', 'd']) c.add(h);
    expect(c.size).toBe(3);
    expect(c.has('a')).toBe(false);
    expect(c.has('d')).toBe(true);
    c.add('b'); // refreshed: now the newest
    c.add('e');
    expect(c.has('b')).toBe(true);
    expect(c.has('c')).toBe(false);
  });

  it('with a TTL of 0 remembers nothing', () => {
    const c = new NegativeCache(0, 3);
    c.add('a');
    expect(c.enabled).toBe(false);
    expect(c.has('a')).toBe(false);
  });
});
