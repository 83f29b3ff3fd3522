import { Inject, Injectable, Logger, type OnModuleDestroy } from '@nestjs/common';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { DatabaseHealth } from '../database/database-health';
import { NarInfoRepository } from '../database/narinfo.repository';
import { isUploadOrigin } from '../database/upload-origin';
import { MetricsService, type PrefetchResult } from '../metrics/metrics.service';
import { ActiveDownloads } from '../nar/active-downloads';
import { NarService } from '../nar/nar.service';
import { NarInfoEvents, type AskedNarInfo, type FetchedNarInfo } from '../narinfo/narinfo-events';
import { NarInfoService } from '../narinfo/narinfo.service';
import { isStorePathHash, STORE_PATH_HASH_LENGTH } from '../nix/store-path';
import { inBackground } from '../upstream/background';
import type { UpstreamClient } from '../upstream/upstream-client';
import { UpstreamService } from '../upstream/upstream.service';
import { PrefetchQueue, type PrefetchKind } from './prefetch-queue';

/** Most prefetches waiting; beyond it new ones are dropped (counted as `dropped`). */
export const PREFETCH_MAX_QUEUED = 10_000;
/** How soon a queue held back by busy upstreams looks again. */
const RETRY_MS = 10;
/** How long shutdown waits for running narinfo prefetches once they are aborted. */
const SHUTDOWN_WAIT_MS = 5_000;

/**
 * Fetches ahead of clients. A narinfo fetched from an upstream brings the narinfos of its
 * References (and theirs, over the whole closure): a Nix client walks a closure one level after
 * the other, and finds them stored. A narinfo a client asked for brings its NAR, so that the
 * client's GET of it joins the download or finds it stored. Both go through the flows' own paths
 * (NarInfoService.prefetch, NarService.prefetch): the same locks, verification, negative cache and
 * fan-out, and a client asking for something being prefetched joins it. What is known — stored,
 * remembered as missing, being fetched, already queued — is not queued. The work waits in a
 * bounded queue and runs a few at a time, and only while the upstreams it asks are not busy with
 * clients' requests (see PrefetchQueue and --cache-prefetch-per-upstream).
 */
@Injectable()
export class PrefetchService implements OnModuleDestroy {
  private readonly logger = new Logger('prefetch');
  private readonly queue: PrefetchQueue;
  private closed = false;

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    private readonly narinfos: NarInfoService,
    private readonly nars: NarService,
    private readonly active: ActiveDownloads,
    private readonly repo: NarInfoRepository,
    private readonly db: DatabaseHealth,
    private readonly upstream: UpstreamService,
    private readonly metrics: MetricsService,
    events: NarInfoEvents,
  ) {
    this.queue = new PrefetchQueue({
      concurrency: config.prefetch.concurrency,
      maxQueued: PREFETCH_MAX_QUEUED,
      retryMs: RETRY_MS,
    });
    metrics.watchPrefetch(() => ({ queued: this.queue.queued, running: this.queue.running }));
    if (config.prefetch.narinfos) events.onFetched((e) => this.referencesOf(e));
    if (config.prefetch.nars) events.onAsked((e) => this.narOf(e));
  }

  /** Waiting and running prefetches (for the status page). */
  get state(): { queued: number; running: number } {
    return { queued: this.queue.queued, running: this.queue.running };
  }

  /**
   * First of the shutdown hooks: nothing new starts, the queue is dropped, running lookups are
   * aborted (before they store anything) and awaited. Running NAR downloads are not awaited here:
   * ActiveDownloads' own shutdown, which comes next, aborts them like any download nobody waits for.
   */
  async onModuleDestroy(): Promise<void> {
    this.closed = true;
    const left = await this.queue.stop(SHUTDOWN_WAIT_MS);
    if (left > 0) this.logger.warn(`${left} prefetch(es) still running at shutdown`);
  }

  /** Queues the narinfos of `e`'s References that are not stored or known. */
  private referencesOf(e: FetchedNarInfo): void {
    if (this.closed) return;
    const hashes = new Set<string>();
    for (const ref of e.references) {
      const hash = ref.slice(0, STORE_PATH_HASH_LENGTH);
      if (hash !== e.hash && isStorePathHash(hash) && !this.queue.has(narInfoKey(hash))) {
        hashes.add(hash);
      }
    }
    if (hashes.size === 0) return;
    void this.queueUnstored(e.hash, [...hashes]);
  }

  private async queueUnstored(parent: string, hashes: string[]): Promise<void> {
    let stored: Set<string>;
    try {
      stored = await this.repo.storedAmong(hashes);
    } catch (e) {
      if (!this.db.noteFailure(e)) this.logger.warn(`prefetch after ${parent}: ${String(e)}`);
      return;
    }
    if (this.closed) return;
    let queued = 0;
    for (const hash of hashes) {
      if (stored.has(hash)) {
        this.count('narinfo', 'skipped');
        continue;
      }
      if (this.add('narinfo', narInfoKey(hash), (signal) => this.narInfo(hash, signal))) queued++;
    }
    if (queued > 0) {
      this.logger.debug(
        `prefetching ${queued} narinfo(s) referenced by ${parent}.narinfo (${this.queue.queued} queued)`,
      );
    }
  }

  private async narInfo(hash: string, signal: AbortSignal): Promise<void> {
    const result = await this.narinfos.prefetch(hash, signal).catch((e: unknown) => {
      if (!this.closed && !this.db.noteFailure(e)) {
        this.logger.warn(`prefetching ${hash}.narinfo: ${String(e)}`);
      }
      return 'failed' as const;
    });
    if (this.closed) return;
    const counted: PrefetchResult = result === 'known' || result === 'stored' ? 'skipped' : result;
    this.count('narinfo', counted);
    this.logger.debug(`prefetch ${hash}.narinfo: ${result}`);
  }

  /** Queues the NAR of a narinfo a client asked for, unless it is stored, running or uploaded. */
  private narOf(e: AskedNarInfo): void {
    if (this.closed || isUploadOrigin(e.upstreamUrl)) return;
    const key = `nar:${e.narKey}`;
    if (this.active.get(e.narKey) !== undefined || this.queue.has(key)) return;
    const up = this.upstream.upstreamOf(e.upstreamUrl);
    this.add(
      'nar',
      key,
      (signal) => this.nar(e.narKey, signal),
      () => up === undefined || this.hasRoom(up),
    );
  }

  private async nar(name: string, signal: AbortSignal): Promise<void> {
    const download = this.nars.prefetch(name).catch((e: unknown) => {
      if (!this.closed && !this.db.noteFailure(e)) {
        this.logger.debug(`prefetching nar/${name}: ${String(e)}`);
      }
      return 'failed' as const;
    });
    // At shutdown the job ends at once: the download itself is aborted and awaited by
    // ActiveDownloads' shutdown, which runs after this module's.
    let onAbort: () => void = () => undefined;
    const aborted = new Promise<'aborted'>((done) => {
      onAbort = () => done('aborted');
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    });
    const result = await Promise.race([download, aborted]);
    signal.removeEventListener('abort', onAbort);
    if (this.closed || result === 'aborted') return;
    const counted: PrefetchResult =
      result === 'downloaded' ? 'fetched' : result === 'failed' ? 'failed' : 'skipped';
    this.count('nar', counted);
    this.logger.debug(`prefetch nar/${name}: ${result}`);
  }

  /** Queues a job; false (and counted) when the queue is full. */
  private add(
    kind: PrefetchKind,
    key: string,
    run: (signal: AbortSignal) => Promise<void>,
    canStart: () => boolean = () => this.upstreamsHaveRoom(),
  ): boolean {
    const added = this.queue.add({
      kind,
      key,
      run: (signal) => inBackground(() => run(signal)),
      canStart,
    });
    if (added === 'full') this.count(kind, 'dropped');
    return added === 'queued';
  }

  /** Every upstream a narinfo lookup asks has room (those skipped while backing off are not asked). */
  private upstreamsHaveRoom(): boolean {
    return this.upstream.upstreams.every((u) => u.health().state === 'open' || this.hasRoom(u));
  }

  /** Clients' requests waiting for `up` and the prefetches running leave room for one more. */
  private hasRoom(up: UpstreamClient): boolean {
    return up.clientsInFlight + this.queue.running < this.config.prefetch.perUpstream;
  }

  private count(kind: PrefetchKind, result: PrefetchResult): void {
    this.metrics.prefetch(kind, result);
  }
}

function narInfoKey(hash: string): string {
  return `narinfo:${hash}`;
}
