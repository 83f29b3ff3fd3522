import { describe, expect, it } from 'vitest';
import { SingleFlight } from './single-flight';

describe('SingleFlight', () => {
  it('runs the work once for concurrent callers of one key and shares its result', async () => {
    const flights = new SingleFlight<string, number>();
    let runs = 0;
    let finish!: (n: number) => void;
    const work = () => {
      runs++;
      return new Promise<number>((resolve) => (finish = resolve));
    };
    const a = flights.run('k', work);
    const b = flights.run('k', work);
    expect(flights.has('k')).toBe(true);
    finish(7);
    expect(await Promise.all([a, b])).toEqual([7, 7]);
    expect(runs).toBe(1);
  });

  it('frees the key once the work settles, also after a failure, so the next call starts afresh', async () => {
    const flights = new SingleFlight<string, number>();
    await expect(flights.run('k', () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(flights.has('k')).toBe(false);
    expect(await flights.run('k', () => Promise.resolve(2))).toBe(2);
    expect(flights.has('k')).toBe(false);
  });

  it('keeps different keys apart', async () => {
    const flights = new SingleFlight<string, string>();
    const [a, b] = await Promise.all([
      flights.run('a', () => Promise.resolve('A')),
      flights.run('b', () => Promise.resolve('B')),
    ]);
    expect([a, b]).toEqual(['A', 'B']);
  });
});
