import { Logger } from '@nestjs/common';
import type { LocalLocker } from '../local/local-locker';
import type { Lease, LockHolder, Locker, LockerStatus } from '../locker';
import { RedisUnavailableError, type RedisLocker } from './redis-locker';

/**
 * Redis locks that can fall back to in-process locks. Every operation is tried on Redis first; when
 * Redis cannot be reached (never on mere contention) and degraded mode is allowed, the operation is
 * served by the local locker instead, so one instance keeps working on its own. Without degraded
 * mode the Redis error is passed on.
 *
 * A lease stays with the locker that issued it: local leases release and extend locally. While
 * Redis is unreachable its leases cannot be extended (they resolve false: the lock is as good as
 * lost, since the others have moved to local locks) and releasing them is skipped (they expire).
 * When Redis is back, an acquire first waits for a local lease still held on the same key, so work
 * started in degraded mode is not overlapped by this instance.
 */
export class DegradableLocker implements Locker {
  private readonly logger = new Logger('locking');
  private redisDown = false;
  private degraded = 0;

  constructor(
    private readonly redis: RedisLocker,
    private readonly local: LocalLocker,
    private readonly allowDegraded: boolean,
  ) {
    redis.onConnectionChange((up, detail) => this.observe(up, detail));
  }

  /** How many operations were served by the local locker because Redis was unreachable. */
  get degradedOperations(): number {
    return this.degraded;
  }

  acquire(key: string, ttlMs: number, info?: string): Promise<Lease> {
    return this.either(
      async () => {
        await this.waitForLocalHolder(key, ttlMs);
        return this.wrap(await this.redis.acquire(key, ttlMs, info));
      },
      () => this.local.acquire(key, ttlMs, info),
    );
  }

  tryAcquire(key: string, ttlMs: number, info?: string): Promise<Lease | null> {
    return this.either(
      async () => {
        if ((await this.local.holderInfo(key)) !== null) return null;
        const lease = await this.redis.tryAcquire(key, ttlMs, info);
        return lease && this.wrap(lease);
      },
      () => this.local.tryAcquire(key, ttlMs, info),
    );
  }

  holderInfo(key: string): Promise<string | null> {
    return this.either(
      async () => (await this.redis.holderInfo(key)) ?? this.local.holderInfo(key),
      () => this.local.holderInfo(key),
    );
  }

  holder(key: string): Promise<LockHolder | null> {
    return this.either(
      async () => (await this.redis.holder(key)) ?? this.local.holder(key),
      () => this.local.holder(key),
    );
  }

  breakLease(key: string, token: string): Promise<boolean> {
    return this.either(
      async () => (await this.redis.breakLease(key, token)) || this.local.breakLease(key, token),
      () => this.local.breakLease(key, token),
    );
  }

  status(): LockerStatus {
    const redis = this.redis.status();
    if (redis.healthy) return redis;
    if (!this.allowDegraded) return { ...redis, healthy: false, degraded: false };
    return {
      backend: 'redis',
      healthy: true,
      degraded: true,
      detail: `${redis.detail ?? 'Redis is unreachable'}; using in-process locks`,
    };
  }

  async close(): Promise<void> {
    await this.redis.close();
    await this.local.close();
  }

  /** Runs `viaRedis`; if Redis is unreachable, runs `viaLocal` (degraded mode) or rethrows. */
  private async either<T>(viaRedis: () => Promise<T>, viaLocal: () => Promise<T>): Promise<T> {
    try {
      return await viaRedis();
    } catch (e) {
      if (!this.fellBack(e)) throw e;
      return viaLocal();
    }
  }

  /** True if `e` means Redis is unreachable and degraded mode takes over (and counts it). */
  private fellBack(e: unknown): boolean {
    if (!(e instanceof RedisUnavailableError)) return false;
    this.observe(false, e.message);
    if (!this.allowDegraded) return false;
    this.degraded++;
    return true;
  }

  private wrap(lease: Lease): Lease {
    return {
      key: lease.key,
      release: async () => {
        try {
          await lease.release();
        } catch (e) {
          if (!this.fellBack(e)) throw e;
        }
      },
      extend: async (ttlMs: number) => {
        try {
          return await lease.extend(ttlMs);
        } catch (e) {
          if (!this.fellBack(e)) throw e;
          return false;
        }
      },
    };
  }

  /** A local lease from degraded mode may still hold `key`: wait until it is released or expires. */
  private async waitForLocalHolder(key: string, ttlMs: number): Promise<void> {
    if ((await this.local.holderInfo(key)) === null) return;
    const lease = await this.local.acquire(key, ttlMs);
    await lease.release();
  }

  /**
   * Logs the transitions between Redis reachable and unreachable, once each. "Reachable" comes only
   * from the connection becoming ready; "unreachable" also from a failed operation.
   */
  private observe(up: boolean, detail = ''): void {
    if (up === !this.redisDown) return;
    this.redisDown = !up;
    if (up) {
      this.logger.log(
        this.allowDegraded
          ? 'Redis is reachable again; leaving degraded mode: locks are shared through Redis'
          : 'Redis is reachable again',
      );
    } else if (this.allowDegraded) {
      this.logger.warn(`${detail}; entering degraded mode: locks are local to this instance`);
    } else {
      this.logger.error(`${detail}; lock operations fail until Redis is back`);
    }
  }
}
