import { Inject, Injectable, Logger, type OnModuleInit } from '@nestjs/common';
import { SchedulerRegistry } from '@nestjs/schedule';
import { CronJob } from 'cron';
import type { NarFileEntity } from '../database/entities';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { formatSize } from '../config/units';
import { NarFileRepository } from '../database/nar-file.repository';
import { PinRepository } from '../database/pin.repository';
import { LRU_LOCK_KEY } from '../locking/lock-keys';
import { TakeoverLocks } from '../instances/takeover-locks';
import { MetricsService } from '../metrics/metrics.service';
import { NAR_STORE, type NarStore } from '../storage/nar-store';
import { RememberedNars } from '../nar/stored-nar-memory';

export interface LruReport {
  /** False when another run held the LRU lock. */
  ran: boolean;
  sizeBefore: number;
  sizeAfter: number;
  evicted: number;
  evictedBytes: number;
  /** Stored NARs kept because a pin's closure holds them (counted among those looked at). */
  pinned: number;
}

/** The LRU job as the status page shows it. */
export interface LruStatus {
  /** --cache-max-size, or null when there is no limit (and so no job). */
  maxBytes: number | null;
  schedule: string;
  /** When the job runs next on this instance (ISO 8601), or null without a limit. */
  nextRunAt: string | null;
  /** The last run on this instance since it started, or null. */
  lastRun: LruRun | null;
}

export interface LruRun {
  at: string;
  durationMs: number;
  /** ran: evicted what was needed; skipped: another run held the LRU lock; failed: see `error`. */
  result: 'ran' | 'skipped' | 'failed';
  evicted: number;
  evictedBytes: number;
  /** Stored bytes after the run (null when it failed). */
  sizeAfter: number | null;
  error?: string;
}

const BATCH = 200;

/** Keeps stored NARs under --cache-max-size by evicting the least recently used ones. */
@Injectable()
export class LruService implements OnModuleInit {
  private readonly logger = new Logger('lru');
  private job?: CronJob;
  private lastRun: LruRun | null = null;

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    private readonly locks: TakeoverLocks,
    @Inject(NAR_STORE) private readonly store: NarStore,
    private readonly files: NarFileRepository,
    private readonly pins: PinRepository,
    private readonly scheduler: SchedulerRegistry,
    private readonly metrics: MetricsService,
    private readonly remembered: RememberedNars,
  ) {
    metrics.watchStoredBytes(() => files.storedBytes());
  }

  onModuleInit(): void {
    const { maxSize, schedule } = this.config.lru;
    if (maxSize === undefined) return;
    const job = CronJob.from({
      cronTime: schedule,
      onTick: () => {
        this.run().catch((e: Error) => this.logger.error(`LRU run failed: ${e.message}`));
      },
      start: true,
    });
    this.job = job;
    this.scheduler.addCronJob('lru', job);
    this.logger.log(`LRU keeps the cache under ${formatSize(maxSize)} (schedule "${schedule}")`);
  }

  status(): LruStatus {
    const next = this.job?.nextDate();
    return {
      maxBytes: this.config.lru.maxSize ?? null,
      schedule: this.config.lru.schedule,
      nextRunAt: next?.isValid ? next.toJSDate().toISOString() : null,
      lastRun: this.lastRun && { ...this.lastRun },
    };
  }

  /** One eviction pass; a no-op when another run holds the LRU lock or no limit is set. */
  async run(maxSize = this.config.lru.maxSize): Promise<LruReport> {
    if (maxSize === undefined) return this.evict(maxSize);
    const began = Date.now();
    const record = (result: LruRun['result'], report?: LruReport, error?: Error) => {
      this.lastRun = {
        at: new Date(began).toISOString(),
        durationMs: Date.now() - began,
        result,
        evicted: report?.evicted ?? 0,
        evictedBytes: report?.evictedBytes ?? 0,
        sizeAfter: report?.sizeAfter ?? null,
        ...(error ? { error: error.message } : {}),
      };
    };
    try {
      const report = await this.evict(maxSize);
      record(report.ran ? 'ran' : 'skipped', report);
      return report;
    } catch (e) {
      record('failed', undefined, e as Error);
      throw e;
    }
  }

  private async evict(maxSize: number | undefined): Promise<LruReport> {
    const sizeBefore = await this.files.storedBytes();
    const report: LruReport = {
      ran: false,
      sizeBefore,
      sizeAfter: sizeBefore,
      evicted: 0,
      evictedBytes: 0,
      pinned: 0,
    };
    if (maxSize === undefined) return report;
    const ttl = this.config.lock.lruTtlMs;
    const lease = await this.locks.tryAcquire(LRU_LOCK_KEY, ttl, 'lru');
    if (!lease) {
      this.metrics.lruRun('skipped');
      this.logger.log('another LRU run is in progress; skipping');
      return report;
    }
    const stopRenewing = this.locks.keepAlive(lease, ttl, 'lru');
    try {
      report.ran = true;
      this.metrics.lruRun('ran');
      let size = await this.files.storedBytes();
      // What pins keep, worked out once per run (a pin made meanwhile counts from the next run).
      const pinned = size > maxSize ? (await this.pins.pinnedClosure()).narKeys : new Set();
      let after: NarFileEntity | undefined;
      while (size > maxSize) {
        const batch = await this.files.lruCandidates(BATCH, after);
        if (batch.length === 0) break;
        after = batch[batch.length - 1];
        for (const f of batch) {
          if (size <= maxSize) break;
          if (pinned.has(f.key)) {
            report.pinned++;
            continue;
          }
          // Rows first: from here on nothing points at the object, so deleting it cannot break a lookup.
          await this.files.deleteWithNarInfos(f.key);
          await this.store.delete(f.key);
          void this.remembered.forgetEverywhere(f.key);
          size -= f.storedSize ?? 0;
          report.evicted++;
          report.evictedBytes += f.storedSize ?? 0;
          this.metrics.lruEvict(f.storedSize ?? 0);
        }
      }
      report.sizeAfter = size;
      if (report.evicted > 0 || report.pinned > 0) {
        const kept = report.pinned > 0 ? ` (kept ${report.pinned} pinned)` : '';
        this.logger.log(
          `evicted ${report.evicted} NARs (${formatSize(report.evictedBytes)})${kept}; ${formatSize(size)} of ${formatSize(maxSize)} used`,
        );
      }
      return report;
    } finally {
      stopRenewing();
      await lease.release();
    }
  }
}
