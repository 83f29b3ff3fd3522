import {
  Inject,
  Injectable,
  Logger,
  type BeforeApplicationShutdown,
  type OnModuleInit,
} from '@nestjs/common';
import { setTimeout as sleep } from 'node:timers/promises';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { MetricsService } from '../metrics/metrics.service';
import { NAR_STORE, type NarStore } from '../storage/nar-store';
import type { NarSpool } from './nar-spool';

/** One NAR this instance is downloading right now. */
export interface ActiveDownload {
  /** What clients (and peers, and an S3 upload) read while it runs. */
  readonly spool: NarSpool;
  /** When it started (epoch ms). */
  readonly startedAt: number;
  /** Settles once the download is committed or discarded and its lock released. */
  readonly settled: Promise<void>;
  /** Breaks the upstream transfer; the download then fails the normal way. */
  abort(why: string): void;
}

/** How long shutdown waits for aborted downloads to clean up (spool deleted, lock released). */
const SHUTDOWN_WAIT_MS = 5_000;
/**
 * At start, another instance's spool (a directory shared by several) counts as a leftover once
 * unchanged this long: a live download writes to it all the time.
 */
const FOREIGN_SPOOL_STALE_MS = 60 * 60_000;

/**
 * The NAR downloads this instance is running, one record per NAR name, from the moment a download
 * starts until it has settled. A record is added and removed here only, so a reader never sees a
 * half-registered download.
 */
@Injectable()
export class ActiveDownloads implements OnModuleInit, BeforeApplicationShutdown {
  private readonly logger = new Logger('nar');
  private readonly byName = new Map<string, ActiveDownload>();

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    @Inject(NAR_STORE) private readonly store: NarStore,
    metrics: MetricsService,
  ) {
    metrics.watchDownloads(() => this.spools());
  }

  /**
   * Removes spool files left by a crash: at start no download of this process runs, so every spool
   * of this instance is garbage (never visible as objects, but they take space — a crash loop would
   * fill the disk). With local locks narwhal runs as a single instance, so every spool in the
   * directory is its own, also one named for another address (a restart on another port, or in a
   * container with a new host name).
   */
  async onModuleInit(): Promise<void> {
    const now = Date.now();
    const single = this.config.lock.kind === 'local';
    const { files, bytes } = await this.store.spool.sweep(
      (f) => f.own || single || now - f.mtimeMs > FOREIGN_SPOOL_STALE_MS,
    );
    if (files > 0) {
      this.logger.log(`removed ${files} spool file(s) left by a crash (${bytes} bytes)`);
    }
  }

  get(name: string): ActiveDownload | undefined {
    return this.byName.get(name);
  }

  get size(): number {
    return this.byName.size;
  }

  /** The spools of every running download (for gauges). */
  *spools(): Iterable<NarSpool> {
    for (const d of this.byName.values()) yield d.spool;
  }

  /** Every running download (for the status page). */
  all(): ActiveDownload[] {
    return [...this.byName.values()];
  }

  /**
   * Registers a started download under its spool's name. Once `finished` settles, `cleanup` runs
   * (the lock is released) and only then is the record removed and `settled` resolved.
   */
  add(
    started: { spool: NarSpool; finished: Promise<unknown>; abort: (why: string) => void },
    cleanup: () => Promise<void>,
  ): ActiveDownload {
    const name = started.spool.key;
    if (this.byName.has(name)) throw new Error(`${name} is already being downloaded`);
    const settled = started.finished
      .then(
        () => undefined,
        () => undefined,
      )
      .then(cleanup)
      .finally(() => this.byName.delete(name));
    const record: ActiveDownload = {
      spool: started.spool,
      startedAt: Date.now(),
      settled,
      abort: started.abort,
    };
    this.byName.set(name, record);
    return record;
  }

  /**
   * Before connections and stores close (after in-flight responses had their grace period): abort
   * what is still downloading and wait for the cleanup, so that no spool file or lock outlives the
   * process.
   */
  async beforeApplicationShutdown(): Promise<void> {
    if (this.byName.size === 0) return;
    this.logger.warn(`aborting ${this.byName.size} unfinished download(s) at shutdown`);
    const pending = [...this.byName.values()].map((d) => {
      d.abort('narwhal is shutting down');
      return d.settled;
    });
    await Promise.race([Promise.allSettled(pending), sleep(SHUTDOWN_WAIT_MS)]);
  }
}
