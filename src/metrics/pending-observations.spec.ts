import { Counter, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { PendingObservations } from './pending-observations';

const BUCKETS = [0.001, 0.005, 0.01, 0.1, 1];

function metricsIn(registry: Registry, name: string) {
  const counter = new Counter({
    name: `${name}_requests_total`,
    help: 'requests',
    labelNames: ['route', 'method', 'status'],
    registers: [registry],
  });
  const histogram = new Histogram({
    name: `${name}_seconds`,
    help: 'durations',
    labelNames: ['route', 'method'],
    buckets: BUCKETS,
    registers: [registry],
  });
  return { counter, histogram };
}

/** Some observations: values in every bucket, on a bound, past the last bound; two series. */
const OBSERVED: [string, string, number, number][] = [
  ['/:file', 'GET', 200, 0.0004],
  ['/:file', 'GET', 200, 0.001],
  ['/:file', 'GET', 404, 0.003],
  ['/nar/:name', 'GET', 200, 0.02],
  ['/nar/:name', 'GET', 200, 0.5],
  ['/nar/:name', 'GET', 200, 7],
  ['/:file', 'HEAD', 200, 0.00002],
];

/**
 * The two exports line by line: the same lines, but a `_sum` may differ in its last digits (its
 * observations are added in another order).
 */
function expectSameExport(batched: string, direct: string): void {
  const b = batched.split('\n');
  const d = direct.split('\n');
  expect(b.length).toBe(d.length);
  b.forEach((line, i) => {
    const [name, value] = line.split(' ');
    if (name.includes('_sum{')) {
      const [dName, dValue] = d[i].split(' ');
      expect(name).toBe(dName);
      expect(Number(value)).toBeCloseTo(Number(dValue), 12);
    } else {
      expect(line).toBe(d[i]);
    }
  });
}

describe('PendingObservations', () => {
  it('exports what prom-client exports for the same observations made one by one', async () => {
    const direct = new Registry();
    const d = metricsIn(direct, 'x');
    const batched = new Registry();
    const b = metricsIn(batched, 'x');
    const pending = new PendingObservations(b.counter, b.histogram);
    // prom-client calls collect before it exports; here the test flushes by hand, twice over.
    const observeAll = (times: number) => {
      for (let t = 0; t < times; t++) {
        for (const [route, method, status, seconds] of OBSERVED) {
          d.counter.labels(route, method, String(status)).inc();
          d.histogram.labels(route, method).observe(seconds);
          const key = `${method} ${status} ${route}`;
          if (!pending.observe(key, seconds)) {
            pending.add(key, { route, method, status: String(status) }, { route, method });
            expect(pending.observe(key, seconds)).toBe(true);
          }
        }
      }
    };
    observeAll(3);
    pending.flush();
    expectSameExport(await batched.metrics(), await direct.metrics());
    observeAll(2);
    pending.flush();
    pending.flush(); // nothing new: changes nothing
    expectSameExport(await batched.metrics(), await direct.metrics());
  });

  it('hands its observations over when the metrics are scraped (collect)', async () => {
    const registry = new Registry();
    const made: {
      pending?: PendingObservations<'route' | 'method' | 'status', 'route' | 'method'>;
    } = {};
    const counter = new Counter({
      name: 'y_total',
      help: 'requests',
      labelNames: ['route', 'method', 'status'],
      registers: [registry],
      collect: () => made.pending?.flush(),
    });
    const histogram = new Histogram({
      name: 'y_seconds',
      help: 'durations',
      labelNames: ['route', 'method'],
      buckets: BUCKETS,
      registers: [registry],
      collect: () => made.pending?.flush(),
    });
    const pending = new PendingObservations(counter, histogram);
    made.pending = pending;
    pending.add('a', { route: '/a', method: 'GET', status: '200' }, { route: '/a', method: 'GET' });
    for (let i = 0; i < 5; i++) pending.observe('a', 0.002);
    const text = await registry.metrics();
    expect(text).toContain('y_total{route="/a",method="GET",status="200"} 5');
    expect(text).toContain('y_seconds_bucket{le="0.005",route="/a",method="GET"} 5');
    expect(text).toContain('y_seconds_count{route="/a",method="GET"} 5');
    expect(pending.observe('unknown', 1)).toBe(false);
  });
});
