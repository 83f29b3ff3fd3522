import { setImmediate as tick } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { withLock, type Lease } from '../locker';
import { LocalLocker } from './local-locker';

/** Lets every pending promise continuation (and one macrotask turn) run. */
async function settle(turns = 3): Promise<void> {
  for (let i = 0; i < turns; i++) await tick();
}

/** Tracks whether a promise has settled, without awaiting it. */
function track<T>(p: Promise<T>): { done: () => boolean; value: () => T | undefined } {
  let done = false;
  let value: T | undefined;
  void p.then((v) => {
    done = true;
    value = v;
  });
  return { done: () => done, value: () => value };
}

let locker: LocalLocker;

beforeEach(() => {
  locker = new LocalLocker();
});

afterEach(async () => {
  vi.useRealTimers();
  await locker.close();
});

describe('LocalLocker mutual exclusion', () => {
  it('lets one of 50 concurrent contenders in at a time, and all of them eventually', async () => {
    let holders = 0;
    let maxHolders = 0;
    const ran: number[] = [];
    await Promise.all(
      Array.from({ length: 50 }, async (_, i) => {
        const lease = await locker.acquire('shared', 60_000);
        holders++;
        maxHolders = Math.max(maxHolders, holders);
        ran.push(i);
        // Hold the lock across several event-loop turns so that overlap would show.
        await settle(2);
        holders--;
        await lease.release();
      }),
    );
    expect(maxHolders).toBe(1);
    expect(ran).toHaveLength(50);
    // Everyone asked in the same turn, in index order, so FIFO lets them in in that order.
    expect(ran).toEqual(Array.from({ length: 50 }, (_, i) => i));
  });

  it('wakes waiters in arrival order', async () => {
    const first = await locker.acquire('k', 60_000);
    const order: string[] = [];
    const waiters = ['b', 'c', 'd', 'e'].map((name) =>
      locker.acquire('k', 60_000).then(async (lease) => {
        order.push(name);
        await settle();
        await lease.release();
      }),
    );
    await settle();
    expect(order).toEqual([]);
    await first.release();
    await Promise.all(waiters);
    expect(order).toEqual(['b', 'c', 'd', 'e']);
  });

  it('a woken waiter that loses the race to a newcomer keeps its turn ahead of later waiters', async () => {
    const first = await locker.acquire('k', 60_000);
    const order: string[] = [];
    const b = locker.acquire('k', 60_000).then((lease) => {
      order.push('b');
      return lease;
    });
    const c = locker.acquire('k', 60_000).then((lease) => {
      order.push('c');
      return lease;
    });
    await settle();
    // Release and, in the same turn, a newcomer asks: whoever gets the lock now, b arrived before c.
    void first.release();
    const newcomer = await locker.tryAcquire('k', 60_000);
    await settle();
    await newcomer?.release();
    await settle();
    expect(order[0]).toBe('b');
    await (await b).release();
    await (await c).release();
    expect(order).toEqual(['b', 'c']);
  });

  it('tryAcquire resolves null while the lock is held and a lease once it is free', async () => {
    const lease = await locker.acquire('k', 60_000);
    expect(await locker.tryAcquire('k', 60_000)).toBeNull();
    expect(await locker.tryAcquire('k', 60_000)).toBeNull();
    await lease.release();
    const again = await locker.tryAcquire('k', 60_000);
    expect(again).not.toBeNull();
    expect(again!.key).toBe('k');
    expect(await locker.tryAcquire('k', 60_000)).toBeNull();
  });

  it('keeps keys independent', async () => {
    const a = await locker.acquire('a', 60_000);
    const b = await locker.tryAcquire('b', 60_000);
    expect(b).not.toBeNull();
    expect(await locker.tryAcquire('a', 60_000)).toBeNull();
    await a.release();
    expect(await locker.tryAcquire('b', 60_000)).toBeNull();
    await b!.release();
  });

  it('release is idempotent and does not free a later holder', async () => {
    const a = await locker.acquire('k', 60_000);
    await a.release();
    const b = await locker.acquire('k', 60_000);
    await a.release();
    expect(await locker.tryAcquire('k', 60_000)).toBeNull();
    await b.release();
    expect(await locker.tryAcquire('k', 60_000)).not.toBeNull();
  });
});

describe('LocalLocker lease expiry', () => {
  beforeEach(() => {
    vi.useFakeTimers({
      toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'],
    });
  });

  it('frees the lock when the lease expires', async () => {
    await locker.acquire('k', 1_000);
    vi.advanceTimersByTime(999);
    expect(await locker.tryAcquire('k', 1_000)).toBeNull();
    vi.advanceTimersByTime(1);
    expect(await locker.tryAcquire('k', 1_000)).not.toBeNull();
  });

  it('expiry wakes the next waiter', async () => {
    await locker.acquire('k', 1_000);
    const waiter = track(locker.acquire('k', 1_000));
    await settle();
    expect(waiter.done()).toBe(false);
    vi.advanceTimersByTime(1_000);
    await settle();
    expect(waiter.done()).toBe(true);
    expect(await locker.tryAcquire('k', 1_000)).toBeNull();
  });

  it('a stale lease cannot release or extend the new holder’s lock', async () => {
    const stale = await locker.acquire('k', 1_000);
    vi.advanceTimersByTime(1_000);
    const fresh = await locker.acquire('k', 5_000);
    await stale.release();
    expect(await locker.tryAcquire('k', 1_000)).toBeNull();
    expect(await stale.extend(10_000)).toBe(false);
    // The stale extend did not change the fresh lease's expiry either.
    vi.advanceTimersByTime(4_999);
    expect(await locker.tryAcquire('k', 1_000)).toBeNull();
    vi.advanceTimersByTime(1);
    const next = await locker.tryAcquire('k', 1_000);
    expect(next).not.toBeNull();
    expect(await fresh.extend(1_000)).toBe(false);
  });

  it('extend pushes the expiry to now + ttl', async () => {
    const lease = await locker.acquire('k', 1_000);
    vi.advanceTimersByTime(900);
    expect(await lease.extend(1_000)).toBe(true);
    vi.advanceTimersByTime(900); // 1800 ms after acquire: past the first ttl
    expect(await locker.tryAcquire('k', 1_000)).toBeNull();
    vi.advanceTimersByTime(100);
    expect(await locker.tryAcquire('k', 1_000)).not.toBeNull();
  });

  it('extend after expiry reports the lease lost', async () => {
    const lease = await locker.acquire('k', 1_000);
    vi.advanceTimersByTime(1_000);
    expect(await lease.extend(1_000)).toBe(false);
    expect(await locker.tryAcquire('k', 1_000)).not.toBeNull();
  });
});

describe('withLock', () => {
  it('runs the work under the lock and returns its value', async () => {
    let heldDuringWork: Lease | null | undefined;
    const result = await withLock(locker, 'job', 60_000, async () => {
      heldDuringWork = await locker.tryAcquire('job', 60_000);
      return 42;
    });
    expect(result).toBe(42);
    expect(heldDuringWork).toBeNull();
    expect(await locker.tryAcquire('job', 60_000)).not.toBeNull();
  });

  it('releases the lock when the work throws, and passes the error on', async () => {
    const boom = new Error('boom');
    await expect(
      withLock(locker, 'job', 60_000, () => {
        return Promise.reject(boom);
      }),
    ).rejects.toBe(boom);
    expect(await locker.tryAcquire('job', 60_000)).not.toBeNull();
  });

  it('hands the lock to a waiter after the work throws', async () => {
    const first = withLock(locker, 'job', 60_000, async () => {
      await settle();
      throw new Error('first fails');
    });
    const second = withLock(locker, 'job', 60_000, () => Promise.resolve('second ran'));
    await expect(first).rejects.toThrow('first fails');
    await expect(second).resolves.toBe('second ran');
  });

  it('serialises concurrent work on the same key', async () => {
    let inside = 0;
    let maxInside = 0;
    await Promise.all(
      Array.from({ length: 10 }, () =>
        withLock(locker, 'job', 60_000, async () => {
          inside++;
          maxInside = Math.max(maxInside, inside);
          await settle();
          inside--;
        }),
      ),
    );
    expect(maxInside).toBe(1);
  });

  it('keeps the lease alive while work runs longer than the ttl', async () => {
    vi.useFakeTimers({
      toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'],
    });
    let finish!: () => void;
    const gate = new Promise<void>((resolve) => (finish = resolve));
    const job = withLock(locker, 'job', 300, () => gate);
    await settle();
    for (let i = 0; i < 20; i++) {
      vi.advanceTimersByTime(100);
      await settle(1);
    }
    // 2 s later, ten times the ttl, the lease is still held.
    expect(await locker.tryAcquire('job', 300)).toBeNull();
    finish();
    await job;
    expect(await locker.tryAcquire('job', 300)).not.toBeNull();
  });
});
