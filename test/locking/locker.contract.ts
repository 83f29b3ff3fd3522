import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LockTimeoutError } from '../../src/common/errors';
import { withLock, type Locker } from '../../src/locking/locker';
import type { Retry } from './redis-servers';

export interface LockerUnderTest {
  locker: Locker;
  cleanup: () => Promise<void>;
}

export interface ContractOptions {
  /**
   * Makes a locker on the backend under test. `retry` overrides the waiting policy; it is only passed
   * when `givesUp`, where lockers made for one suite share their backend (two Redis lockers contend
   * for the same keys, like two instances).
   */
  make: (retry?: Partial<Retry>) => Promise<LockerUnderTest>;
  /** Whether `acquire` gives up with LockTimeoutError after `retry.maxAttempts` (not in-process locks). */
  givesUp: boolean;
}

/** What every Locker must do, whatever is behind it. Keys are distinct per test. */
export function lockerContract(name: string, { make, givesUp }: ContractOptions): void {
  describe(`Locker contract: ${name}`, () => {
    let locker: Locker;
    const cleanups: Array<() => Promise<void>> = [];

    const another = async (retry?: Partial<Retry>): Promise<Locker> => {
      const made = await make(retry);
      cleanups.push(made.cleanup);
      return made.locker;
    };

    beforeEach(async () => {
      locker = await another();
    });
    afterEach(async () => {
      for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    });

    it('lets one of 50 concurrent contenders in at a time, and all of them eventually', async () => {
      let holders = 0;
      let maxHolders = 0;
      const ran = new Set<number>();
      await Promise.all(
        Array.from({ length: 50 }, async (_, i) => {
          const lease = await locker.acquire('mutex', 30_000, `contender ${i}`);
          holders++;
          maxHolders = Math.max(maxHolders, holders);
          expect(await locker.holderInfo('mutex')).toBe(`contender ${i}`);
          await sleep(i % 3);
          ran.add(i);
          holders--;
          await lease.release();
        }),
      );
      expect(maxHolders).toBe(1);
      expect(ran.size).toBe(50);
      expect(await locker.holderInfo('mutex')).toBeNull();
    });

    it('lets a lease that is not renewed expire after its TTL, and hands the lock on', async () => {
      const first = await locker.acquire('expiry', 200, 'first');
      const start = Date.now();
      expect(await locker.tryAcquire('expiry', 5_000)).toBeNull();
      const second = await locker.acquire('expiry', 5_000, 'second');
      const waited = Date.now() - start;
      expect(waited).toBeGreaterThanOrEqual(150);
      expect(waited).toBeLessThan(2_000);
      expect(await locker.holderInfo('expiry')).toBe('second');
      await second.release();
      await first.release();
    });

    it('keeps a lease alive past its TTL while withLock work runs, and nobody else gets in', async () => {
      const ttlMs = 300;
      const rival = locker; // a different lease on the same backend, polling meanwhile
      let rivalGotIn = false;
      let working = true;
      const poll = async () => {
        while (working) {
          const lease = await rival.tryAcquire('renewal', 5_000, 'rival');
          if (lease) {
            rivalGotIn = true;
            await lease.release();
          }
          await sleep(25);
        }
      };

      const result = await withLock(
        locker,
        'renewal',
        ttlMs,
        async () => {
          const polling = poll();
          await sleep(ttlMs * 4);
          expect(await locker.holderInfo('renewal')).toBe('worker');
          // Stop the rival while the lock is still held: after the release it may get in.
          working = false;
          await polling;
          return 'done';
        },
        'worker',
      );

      expect(result).toBe('done');
      expect(rivalGotIn).toBe(false);
      expect(await locker.holderInfo('renewal')).toBeNull();
      const after = await rival.tryAcquire('renewal', 5_000);
      expect(after).not.toBeNull();
      await after?.release();
    });

    it('refuses release and extend by a lease whose lock expired and was taken again', async () => {
      const stale = await locker.acquire('stale', 100, 'stale');
      await sleep(250);
      const current = await locker.acquire('stale', 5_000, 'current');

      await stale.release();
      expect(await locker.holderInfo('stale')).toBe('current');
      expect(await stale.extend(5_000)).toBe(false);
      expect(await locker.holderInfo('stale')).toBe('current');
      expect(await locker.tryAcquire('stale', 5_000)).toBeNull();

      expect(await current.extend(5_000)).toBe(true);
      await current.release();
      expect(await locker.holderInfo('stale')).toBeNull();
      // A released lease is no longer the holder either.
      expect(await current.extend(5_000)).toBe(false);
    });

    it('try-locks: null while held, a lease once released', async () => {
      const held = await locker.tryAcquire('try', 5_000, 'held');
      expect(held).not.toBeNull();
      expect(await locker.tryAcquire('try', 5_000)).toBeNull();
      await held?.release();
      const again = await locker.tryAcquire('try', 5_000);
      expect(again).not.toBeNull();
      await again?.release();
    });

    it("tells the holder's info while held, '' when it gave none, and null when free", async () => {
      expect(await locker.holderInfo('info')).toBeNull();
      const lease = await locker.acquire('info', 5_000, 'http://narwhal-a:8501');
      expect(await locker.holderInfo('info')).toBe('http://narwhal-a:8501');
      expect(await locker.holderInfo('info-other')).toBeNull();
      await lease.release();
      expect(await locker.holderInfo('info')).toBeNull();

      const silent = await locker.acquire('info', 5_000);
      expect(await locker.holderInfo('info')).toBe('');
      await silent.release();
    });

    it("breaks a lease by its holder's token only, freeing the lock for anyone", async () => {
      expect(await locker.holder('takeover')).toBeNull();
      const gone = await locker.acquire('takeover', 30_000, 'http://narwhal-a:8501#boot1');
      const seen = await locker.holder('takeover');
      expect(seen?.info).toBe('http://narwhal-a:8501#boot1');

      expect(await locker.breakLease('takeover', 'not-the-token')).toBe(false);
      expect((await locker.holder('takeover'))?.info).toBe('http://narwhal-a:8501#boot1');

      expect(await locker.breakLease('takeover', seen!.token)).toBe(true);
      expect(await locker.holder('takeover')).toBeNull();
      expect(await gone.extend(30_000)).toBe(false); // the broken lease is not the lock's any more
      const next = await locker.tryAcquire('takeover', 30_000, 'http://narwhal-b:8501#boot2');
      expect(next).not.toBeNull();
      // A token seen before does not break a newer holder.
      expect(await locker.breakLease('takeover', seen!.token)).toBe(false);
      expect((await locker.holder('takeover'))?.info).toBe('http://narwhal-b:8501#boot2');
      await gone.release(); // a no-op: it does not free the newer holder either
      expect((await locker.holder('takeover'))?.info).toBe('http://narwhal-b:8501#boot2');
      await next?.release();
    });

    // In-process lockers wait without a bound: the test does not apply to them.
    if (!givesUp) return;
    it('gives up with LockTimeoutError after maxAttempts', async () => {
      const holder = await locker.acquire('busy', 10_000, 'holder');
      // No jitter: the waits between the 4 attempts are exactly 20, 40 and 80 ms.
      const impatient = await another({
        maxAttempts: 4,
        initialDelayMs: 20,
        maxDelayMs: 80,
        jitter: 0,
      });
      const start = Date.now();
      await expect(impatient.acquire('busy', 10_000)).rejects.toBeInstanceOf(LockTimeoutError);
      const waited = Date.now() - start;
      expect(waited).toBeGreaterThanOrEqual(130);
      expect(waited).toBeLessThan(1_000);
      expect(await locker.holderInfo('busy')).toBe('holder');

      await holder.release();
      const now = await impatient.acquire('busy', 10_000);
      await now.release();
    });
  });
}
