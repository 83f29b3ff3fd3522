import { Logger } from '@nestjs/common';
import { Counter, Gauge, type Registry } from 'prom-client';
import { metricName as name } from './metric-prefix';

/** How long the stored size is reused between scrapes (it is a database query). */
const STORAGE_CACHE_MS = 5_000;

/**
 * What is stored and what makes room: LRU runs and evictions, the bytes of stored NARs (a database
 * query, cached between scrapes and shared with the status page), the size limit, and the local
 * disks' free and total bytes, registered in `registry` (the disk gauges once the disk watch
 * reports).
 */
export class StorageMetrics {
  readonly lruRuns: Counter<'result'>;
  readonly lruEvicted: Counter;
  readonly lruEvictedBytes: Counter;
  readonly storageBytes: Gauge;
  /** Only with --cache-max-size. */
  readonly storageMaxBytes?: Gauge;
  private readonly logger = new Logger('metrics');
  private storedSource: () => Promise<number> = () => Promise.resolve(0);
  private stored?: { bytes: number; at: number };
  /** The last stored size read, kept when a later read fails. */
  private lastStoredBytes: number | null = null;
  private storedQuery?: Promise<void>;
  /** Bumped whenever the stored size changes here, so that a query begun before is not cached. */
  private storedGeneration = 0;

  /** `maxSize`: the configured size limit, if any. */
  constructor(
    maxSize: number | undefined,
    private readonly registry: Registry,
  ) {
    this.lruRuns = new Counter({
      name: name('lru_runs_total'),
      help: 'LRU job runs: ran, or skipped because another run held the LRU lock.',
      labelNames: ['result'],
      registers: [registry],
    });
    this.lruEvicted = new Counter({
      name: name('lru_evicted_total'),
      help: 'NARs evicted by the LRU job.',
      registers: [registry],
    });
    this.lruEvictedBytes = new Counter({
      name: name('lru_evicted_bytes_total'),
      help: 'Bytes of NARs evicted by the LRU job.',
      registers: [registry],
    });
    this.storageBytes = new Gauge({
      name: name('storage_bytes'),
      help: `Bytes of stored NARs, from the database (re-read at most every ${STORAGE_CACHE_MS / 1000} s).`,
      registers: [registry],
      collect: async () => {
        await this.refreshStoredBytes();
        if (this.lastStoredBytes !== null) this.storageBytes.set(this.lastStoredBytes);
      },
    });
    if (maxSize !== undefined) {
      this.storageMaxBytes = new Gauge({
        name: name('storage_max_bytes'),
        help: 'Size limit of stored NARs (--cache-max-size).',
        registers: [registry],
      });
      this.storageMaxBytes.set(maxSize);
    }

    // Known label values start at 0, so that rates and absent-series alerts work from the start.
    for (const r of ['ran', 'skipped']) this.lruRuns.labels(r).inc(0);
    this.lruEvicted.inc(0);
    this.lruEvictedBytes.inc(0);
  }

  lruRun(result: 'ran' | 'skipped'): void {
    this.lruRuns.labels(result).inc();
  }

  lruEvict(bytes: number): void {
    this.lruEvicted.inc();
    this.lruEvictedBytes.inc(bytes);
    this.storedSizeChanged();
  }

  /** Where the stored-size gauge reads from (a database query, cached between scrapes). */
  watchStoredBytes(source: () => Promise<number>): void {
    this.storedSource = source;
    this.storedSizeChanged();
  }

  /**
   * Bytes of stored NARs, from the database, cached like the `storage_bytes` gauge (so page views
   * and scrapes together query at most every few seconds); the last value read when the database
   * does not answer, null until it could be read once.
   */
  async storedBytes(): Promise<number | null> {
    await this.refreshStoredBytes();
    return this.lastStoredBytes;
  }

  /** The cached stored size is out of date: the next scrape reads it again. */
  storedSizeChanged(): void {
    this.stored = undefined;
    this.storedGeneration++;
  }

  /** Where the disk gauges read from: the last look at the local disks (spool, objects). */
  watchDiskSpace(
    source: () => readonly { area: string; freeBytes: number; totalBytes: number }[],
  ): void {
    const free: Gauge<'area'> = new Gauge({
      name: name('disk_free_bytes'),
      help: 'Free bytes on the local disk narwhal writes to, by area: spool (downloads in progress), objects (the filesystem store).',
      labelNames: ['area'],
      registers: [this.registry],
      collect: () => {
        for (const d of source()) free.labels(d.area).set(d.freeBytes);
      },
    });
    const total: Gauge<'area'> = new Gauge({
      name: name('disk_size_bytes'),
      help: 'Size of the local disk narwhal writes to, by area.',
      labelNames: ['area'],
      registers: [this.registry],
      collect: () => {
        for (const d of source()) total.labels(d.area).set(d.totalBytes);
      },
    });
  }

  /**
   * Re-reads the stored size unless the cached value is younger than STORAGE_CACHE_MS and nothing
   * was stored or evicted here since (one query at a time).
   */
  private async refreshStoredBytes(): Promise<void> {
    if (this.stored && Date.now() - this.stored.at < STORAGE_CACHE_MS) return;
    const generation = this.storedGeneration;
    this.storedQuery ??= this.storedSource()
      .then(
        (bytes) => {
          this.lastStoredBytes = bytes;
          if (generation === this.storedGeneration) this.stored = { bytes, at: Date.now() };
        },
        (e: Error) => this.logger.warn(`reading the stored size: ${e.message}`),
      )
      .finally(() => (this.storedQuery = undefined));
    await this.storedQuery;
  }
}
