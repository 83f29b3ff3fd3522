import { Inject, Injectable, Logger } from '@nestjs/common';
import { setTimeout as sleep } from 'node:timers/promises';
import { LockTimeoutError } from '../common/errors';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { keepAlive, LOCKER, type Lease, type Locker } from '../locking/locker';
import { MetricsService, type LockKind } from '../metrics/metrics.service';
import { INSTANCE, type Instance } from './instance';
import { InstanceLiveness } from './instance-liveness';

/**
 * Locks that survive their holder: a lease names its holder (`<url>#<boot>`), and a waiter that finds
 * the holder gone (its process killed or restarted) takes the lock over at once instead of waiting for
 * the lease to expire. Leases are short and renewed while their work runs, so a holder that cannot
 * be asked (a lost host) costs at most one lease. A holder that was only paused past its lease may
 * find its work done twice — commits are atomic and verified, so that costs a second download of the
 * same bytes at most (counted in narwhal_lock_lost_total and narwhal_lock_takeovers_total).
 */
@Injectable()
export class TakeoverLocks {
  private readonly logger = new Logger('locks');

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    @Inject(LOCKER) private readonly locker: Locker,
    @Inject(INSTANCE) private readonly self: Instance,
    private readonly liveness: InstanceLiveness,
    private readonly metrics: MetricsService,
  ) {}

  /** The lock for `key` if it is free now, taking it from a holder that is gone; else null. */
  async tryAcquire(key: string, ttlMs: number, kind: LockKind): Promise<Lease | null> {
    const lease = await this.metrics.timeLock(kind, () =>
      this.locker.tryAcquire(key, ttlMs, this.self.holderInfo),
    );
    if (lease || !(await this.breakIfGone(key, kind))) return lease;
    return this.locker.tryAcquire(key, ttlMs, this.self.holderInfo);
  }

  /**
   * Waits for the lock (retrying with the configured backoff, taking it over from a gone holder)
   * and holds it while `work` runs, renewing the lease; LockTimeoutError after the retries.
   */
  async withLock<T>(
    key: string,
    ttlMs: number,
    kind: LockKind,
    work: () => Promise<T>,
  ): Promise<T> {
    const lease = await this.acquire(key, ttlMs, kind);
    const stop = this.keepAlive(lease, ttlMs, kind);
    try {
      return await work();
    } finally {
      stop();
      await lease.release().catch((e: Error) => this.logger.warn(`releasing ${key}: ${e.message}`));
    }
  }

  /** Renews `lease` while work runs; a lease found lost is counted and logged. */
  keepAlive(lease: Lease, ttlMs: number, kind: LockKind): () => void {
    return keepAlive(lease, ttlMs, () => {
      this.metrics.lockLost(kind);
      this.logger.warn(`lost the lock ${lease.key} while holding it (paused past its lease?)`);
    });
  }

  /**
   * If `key` is held by an instance that is gone, frees it (only that lease: a newer holder is kept)
   * and resolves true; true as well when it is free. False while a live holder has it.
   */
  async breakIfGone(key: string, kind: LockKind): Promise<boolean> {
    const holder = await this.locker.holder(key);
    if (!holder) return true;
    if (!(await this.liveness.isGone(holder.info))) return false;
    const broken = await this.locker.breakLease(key, holder.token);
    if (broken) {
      this.metrics.lockTakeover(kind);
      this.logger.warn(`took over ${key}: its holder ${holder.info.split('#')[0]} is gone`);
    }
    return true;
  }

  private async acquire(key: string, ttlMs: number, kind: LockKind): Promise<Lease> {
    // One process: its own holders are alive by definition, and the local locker queues fairly.
    if (this.config.lock.kind === 'local') {
      const timer = this.metrics.lockTimer(kind);
      const lease = await this.locker.acquire(key, ttlMs, this.self.holderInfo);
      timer();
      return lease;
    }
    const { maxAttempts, initialDelayMs, maxDelayMs, jitter } = this.config.lock.retry;
    const timer = this.metrics.lockTimer(kind);
    for (let attempt = 0; attempt < maxAttempts; attempt++) {
      const lease = await this.locker.tryAcquire(key, ttlMs, this.self.holderInfo);
      if (lease) {
        timer();
        return lease;
      }
      if (await this.breakIfGone(key, kind)) continue;
      const base = Math.min(initialDelayMs * 2 ** attempt, maxDelayMs);
      await sleep(Math.max(0, base * (1 + jitter * (2 * Math.random() - 1))));
    }
    throw new LockTimeoutError(`lock "${key}" is still held after ${maxAttempts} attempts`);
  }
}
