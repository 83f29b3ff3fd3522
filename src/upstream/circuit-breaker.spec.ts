import { describe, expect, it } from 'vitest';
import { CircuitBreaker, retryAfterMs } from './circuit-breaker';

function breaker(failures = 3) {
  let now = 1_000_000;
  const b = new CircuitBreaker({ failures, backoffMs: 1000, maxBackoffMs: 4000 }, () => now);
  return { b, advance: (ms: number) => (now += ms), now: () => now };
}

describe('CircuitBreaker', () => {
  it('stays closed below the threshold; a success resets the count', () => {
    const { b } = breaker();
    b.failed();
    b.failed();
    b.succeeded();
    b.failed();
    b.failed();
    expect(b.state).toBe('closed');
    expect(b.tryPass()).toBe(true);
    expect(b.snapshot().consecutiveFailures).toBe(2);
  });

  it('opens after N failures in a row, lets one trial through after the back-off, doubles it on failure up to the maximum', () => {
    const { b, advance, now } = breaker();
    for (let i = 0; i < 3; i++) b.failed();
    expect(b.state).toBe('open');
    expect(b.tryPass()).toBe(false);
    expect(b.snapshot().retryAt).toBe(now() + 1000);
    advance(1000);
    expect(b.state).toBe('half-open');
    expect(b.tryPass()).toBe(true);
    expect(b.tryPass()).toBe(false); // one trial at a time
    b.failed();
    expect(b.snapshot()).toMatchObject({ state: 'open', retryAt: now() + 2000 });
    for (const backoff of [4000, 4000]) {
      advance(backoff);
      expect(b.tryPass()).toBe(true);
      b.failed();
      expect(b.snapshot().retryAt).toBe(now() + 4000);
    }
    advance(4000);
    expect(b.tryPass()).toBe(true);
    b.succeeded();
    expect(b.snapshot()).toEqual({ state: 'closed', consecutiveFailures: 0 });
    for (let i = 0; i < 3; i++) b.failed();
    expect(b.snapshot().retryAt).toBe(now() + 1000); // the back-off starts over
  });

  it('a cancelled trial frees the slot without a verdict', () => {
    const { b, advance } = breaker();
    for (let i = 0; i < 3; i++) b.failed();
    advance(1000);
    expect(b.tryPass()).toBe(true);
    b.released();
    expect(b.state).toBe('half-open');
    expect(b.tryPass()).toBe(true);
  });

  it('Retry-After opens it at once, capped at the maximum back-off', () => {
    const { b, now } = breaker();
    b.failed(2500);
    expect(b.snapshot()).toMatchObject({ state: 'open', retryAt: now() + 2500 });
    const { b: b2, now: now2 } = breaker();
    b2.failed(3_600_000);
    expect(b2.snapshot().retryAt).toBe(now2() + 4000);
  });

  it('with 0 failures it never opens', () => {
    const { b } = breaker(0);
    for (let i = 0; i < 100; i++) b.failed(5000);
    expect(b.state).toBe('closed');
    expect(b.tryPass()).toBe(true);
  });
});

describe('retryAfterMs', () => {
  it('reads delta-seconds and HTTP dates, ignores the rest', () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    expect(retryAfterMs('120', now)).toBe(120_000);
    expect(retryAfterMs(['7'], now)).toBe(7000);
    expect(retryAfterMs('Thu, 01 Jan 2026 00:00:30 GMT', now)).toBe(30_000);
    expect(retryAfterMs('Wed, 31 Dec 2025 00:00:00 GMT', now)).toBe(0);
    expect(retryAfterMs('soon', now)).toBeUndefined();
    expect(retryAfterMs(undefined, now)).toBeUndefined();
  });
});
