import { describe, expect, it } from 'vitest';
import type { CounterTotals } from '../metrics/metrics.service';
import { CounterHistory, type CounterSample } from './counter-history';

const MIN = 60_000;
const T0 = Date.parse('2026-11-27T10:00:00Z');

/** Running totals after `hits` narinfo hits, `misses` misses, `served`/`fetched` bytes, `errors`. */
function sample(
  at: number,
  t: { hits?: number; misses?: number; served?: number; fetched?: number; errors?: number },
): CounterSample {
  const totals: CounterTotals = {
    narinfo: { hit: t.hits ?? 0, miss: t.misses ?? 0, not_found: 0 },
    nar: { hit: 0, download: 0, joined: 0, peer: 0 },
    servedBytes: { storage: t.served ?? 0, download: 0, peer: 0 },
    upstreamBytes: t.fetched ?? 0,
    downloads: { stored: 0, discarded: 0 },
    upstreams: { 'https://a.example': { requests: 0, errors: t.errors ?? 0, seconds: 0 } },
  };
  return { at, totals };
}

describe('CounterHistory', () => {
  it('has one point per interval, plus the running one up to now', () => {
    const h = new CounterHistory(MIN, 60);
    h.add(sample(T0, {}));
    h.add(sample(T0 + MIN, { hits: 3, misses: 1, served: 1000, fetched: 400, errors: 2 }));
    const points = h.points(sample(T0 + MIN + 15_000, { hits: 5, misses: 1, served: 1500 }));
    expect(points).toHaveLength(2);
    expect(points[0]).toEqual({
      from: '2026-11-27T10:00:00.000Z',
      seconds: 60,
      narinfo: { hit: 3, miss: 1, notFound: 0 },
      nar: { hit: 0, download: 0, joined: 0, peer: 0 },
      servedBytes: 1000,
      upstreamBytes: 400,
      upstreamErrors: 2,
    });
    expect(points[1]).toMatchObject({
      from: '2026-11-27T10:01:00.000Z',
      seconds: 15,
      narinfo: { hit: 2, miss: 0 },
      servedBytes: 500,
    });
  });

  it('keeps an hour: the oldest samples fall out of the ring', () => {
    const h = new CounterHistory(MIN, 60);
    for (let i = 0; i <= 90; i++) h.add(sample(T0 + i * MIN, { hits: i }));
    expect(h.oldest!.at).toBe(T0 + 30 * MIN);
    const points = h.points(sample(T0 + 90 * MIN + 1000, { hits: 91 }));
    expect(points).toHaveLength(60);
    expect(points.at(-1)!.seconds).toBe(1);
    expect(points.every((p) => p.narinfo.hit === 1)).toBe(true);
  });

  it('makes one longer point of a missed sample, and ignores samples out of order', () => {
    const h = new CounterHistory(MIN, 60);
    h.add(sample(T0, {}));
    h.add(sample(T0 + 3 * MIN, { served: 300 }));
    h.add(sample(T0 + 2 * MIN, { served: 100 })); // older than the last: ignored
    const points = h.points(sample(T0 + 3 * MIN, { served: 300 }));
    expect(points).toHaveLength(1);
    expect(points[0]).toMatchObject({ seconds: 180, servedBytes: 300 });
  });

  it('has only the running point before the first interval ends, and nothing before a sample', () => {
    const h = new CounterHistory(MIN, 60);
    expect(h.points(sample(T0, {}))).toEqual([]);
    h.add(sample(T0, {}));
    expect(h.points(sample(T0 + 5000, { misses: 2 }))).toMatchObject([
      { seconds: 5, narinfo: { miss: 2 } },
    ]);
  });
});
