import { Inject, Injectable, Logger, type OnModuleInit } from '@nestjs/common';
import { SchedulerRegistry } from '@nestjs/schedule';
import { CronJob } from 'cron';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { formatSize } from '../config/units';
import { NarFileRepository } from '../database/nar-file.repository';
import { LRU_LOCK_KEY } from '../locking/lock-keys';
import { TakeoverLocks } from '../instances/takeover-locks';
import { MetricsService } from '../metrics/metrics.service';
import { NAR_STORE, type NarStore } from '../storage/nar-store';

export interface LruReport {
  /** False when another run held the LRU lock. */
  ran: boolean;
  sizeBefore: number;
  sizeAfter: number;
  evicted: number;
  evictedBytes: number;
}

const BATCH = 200;

/** Keeps stored NARs under --cache-max-size by evicting the least recently used ones. */
@Injectable()
export class LruService implements OnModuleInit {
  private readonly logger = new Logger('lru');

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    private readonly locks: TakeoverLocks,
    @Inject(NAR_STORE) private readonly store: NarStore,
    private readonly files: NarFileRepository,
    private readonly scheduler: SchedulerRegistry,
    private readonly metrics: MetricsService,
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
    this.scheduler.addCronJob('lru', job);
    this.logger.log(`LRU keeps the cache under ${formatSize(maxSize)} (schedule "${schedule}")`);
  }

  /** One eviction pass; a no-op when another run holds the LRU lock or no limit is set. */
  async run(maxSize = this.config.lru.maxSize): Promise<LruReport> {
    const sizeBefore = await this.files.storedBytes();
    const report: LruReport = {
      ran: false,
      sizeBefore,
      sizeAfter: sizeBefore,
      evicted: 0,
      evictedBytes: 0,
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
      while (size > maxSize) {
        const batch = await this.files.lruCandidates(BATCH);
        if (batch.length === 0) break;
        for (const f of batch) {
          if (size <= maxSize) break;
          // Rows first: from here on nothing points at the object, so deleting it cannot break a lookup.
          await this.files.deleteWithNarInfos(f.key);
          await this.store.delete(f.key);
          size -= f.storedSize ?? 0;
          report.evicted++;
          report.evictedBytes += f.storedSize ?? 0;
          this.metrics.lruEvict(f.storedSize ?? 0);
        }
      }
      report.sizeAfter = size;
      if (report.evicted > 0) {
        this.logger.log(
          `evicted ${report.evicted} NARs (${formatSize(report.evictedBytes)}); ${formatSize(size)} of ${formatSize(maxSize)} used`,
        );
      }
      return report;
    } finally {
      stopRenewing();
      await lease.release();
    }
  }
}
