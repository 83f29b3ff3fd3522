import {
  Inject,
  Injectable,
  Logger,
  type OnApplicationShutdown,
  type OnModuleInit,
} from '@nestjs/common';
import { readdir, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { NotFoundError, UpstreamUnavailableError } from '../common/errors';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import type { NarFileEntity } from '../database/entities';
import { NarFileRepository } from '../database/nar-file.repository';
import { keepAlive, LOCKER, type Locker } from '../locking/locker';
import { MetricsService } from '../metrics/metrics.service';
import { parseNarFileName } from '../nix/compression';
import { NAR_STORE, type NarStore } from '../storage/nar-store';
import { UpstreamService } from '../upstream/upstream.service';
import { resolveRange, type ByteRange } from './byte-range';
import type { NarDownload } from './nar-download';
import { NarFetcher } from './nar-fetcher';
import { PeerClient } from './peer-client';

/** What the controller streams to one client. */
export interface NarResponse {
  body: Readable;
  /** Length of the whole NAR file, when known. */
  length?: number;
  /** Set when `body` is only this part of the file (a 206 answer). */
  range?: ByteRange;
  /** storage: a stored copy; download: this instance's download; peer: another instance's download. */
  source: 'storage' | 'download' | 'peer';
}

/** Who is fetching a NAR that is not stored yet. */
type Claim =
  { kind: 'local'; download: NarDownload } | { kind: 'peer'; url: string } | { kind: 'retry' };

const STALE_SPOOL_MS = 10 * 60_000;

/**
 * The NAR download flow. Stored → stream from storage. Otherwise exactly one download per NAR across
 * all instances: the instance that takes the NAR's lock downloads it (NarFetcher) and every client of
 * that instance streams from the download as it arrives; clients of other instances stream it from the
 * lock holder (whose URL is in the lock), or — if it cannot be reached — wait for it to be stored.
 */
@Injectable()
export class NarService implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger('nar');
  /** This instance's running downloads, by NAR name. */
  private readonly downloads = new Map<string, NarDownload>();
  /** Every running download's completion, with a way to abort it (at shutdown). */
  private readonly running = new Map<Promise<unknown>, (why: string) => void>();
  /** The completion of this instance's download of each NAR: committed or discarded, lock released. */
  private readonly settling = new Map<string, Promise<unknown>>();
  /** Pending claims, so that concurrent local requests decide once. */
  private readonly claims = new Map<string, Promise<Claim>>();

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    @Inject(NAR_STORE) private readonly store: NarStore,
    @Inject(LOCKER) private readonly locker: Locker,
    private readonly files: NarFileRepository,
    private readonly upstream: UpstreamService,
    private readonly fetcher: NarFetcher,
    private readonly peers: PeerClient,
    private readonly metrics: MetricsService,
  ) {
    metrics.watchDownloads(() => this.downloads.values());
  }

  /** Removes spool files left by a crash (never visible as objects, but they take space). */
  async onModuleInit(): Promise<void> {
    const now = Date.now();
    for (const name of await readdir(this.store.spoolDir).catch(() => [] as string[])) {
      if (!name.endsWith('.part')) continue;
      const p = join(this.store.spoolDir, name);
      const s = await stat(p).catch(() => null);
      if (s && now - s.mtimeMs > STALE_SPOOL_MS) await unlink(p).catch(() => undefined);
    }
  }

  /**
   * At shutdown (after in-flight responses had their grace period): abort what is still downloading
   * and wait for the cleanup, so that no spool file or lock outlives the process.
   */
  async onApplicationShutdown(): Promise<void> {
    if (this.running.size === 0) return;
    this.logger.warn(`aborting ${this.running.size} unfinished download(s) at shutdown`);
    const pending = [...this.running.keys()];
    for (const abort of this.running.values()) abort('narwhal is shutting down');
    await Promise.race([Promise.allSettled(pending), sleep(5_000)]);
  }

  get downloadsInFlight(): number {
    return this.downloads.size;
  }

  /**
   * GET: a stream of the NAR, from storage, from this instance's download or from a peer's; with a
   * `Range` header (Nix resuming an interrupted download), only that part when the length is known.
   * Throws RangeNotSatisfiableError for a range past the end.
   */
  async get(name: string, rangeHeader?: string): Promise<NarResponse> {
    parseNarFileName(name); // 400 for anything that is not a NAR file name
    const { maxAttempts, initialDelayMs, maxDelayMs, jitter } = this.config.lock.retry;
    let delay = initialDelayMs;
    for (let attempt = 0; attempt < maxAttempts; attempt++) {
      const row = await this.files.find(name);
      const stored = await this.openStored(row, rangeHeader);
      if (stored) {
        this.metrics.narRequest('hit');
        return stored;
      }
      const joining = this.downloads.has(name) || this.claims.has(name);
      const claim = await this.claim(name);
      if (claim.kind === 'local') {
        const { length } = claim.download;
        const range = resolveRange(rangeHeader, length);
        // A download that already failed is not joined: once it is cleaned up, the next attempt
        // starts a new one.
        const body =
          claim.download.state === 'failed' ? null : claim.download.tryCreateReader(range);
        if (body) {
          this.metrics.narRequest(joining ? 'joined' : 'download');
          return { body, length, range, source: 'download' };
        }
        // It ended in the meantime (stored or discarded): look again once it has settled.
        await this.settling.get(name);
        continue;
      }
      if (claim.kind === 'peer') {
        // The peer's download has the length the narinfo announced (a range needs it up front).
        const length = row?.fileSize ?? undefined;
        const range = resolveRange(rangeHeader, length);
        const remote = await this.peers.open(
          claim.url,
          name,
          range && length !== undefined ? { range, length } : undefined,
        );
        if (remote) {
          this.metrics.narRequest('peer');
          return { ...remote, source: 'peer' };
        }
      }
      // The holder finished, failed, or cannot be reached: look again after a pause.
      await sleep(delay * (1 + jitter * (2 * Math.random() - 1)));
      delay = Math.min(maxDelayMs, delay * 2);
    }
    throw new UpstreamUnavailableError(`${name}: gave up waiting for another instance's download`);
  }

  /** HEAD: the size if the NAR is stored or can be fetched, without downloading it. */
  async head(name: string): Promise<{ length?: number }> {
    parseNarFileName(name);
    const row = await this.files.find(name);
    if (row?.storedSize != null) {
      const s = await this.store.stat(name);
      if (s) return { length: s.size };
    }
    const running = this.downloads.get(name);
    if (running) return { length: running.length };
    if (!row) throw new NotFoundError(`${name} is not known`);
    try {
      const { length } = await this.upstream.open(row.upstreamUrl, 'HEAD');
      return { length: row.fileSize ?? length };
    } catch (e) {
      this.logger.debug(`HEAD ${name}: ${this.upstream.describeError(e)}`);
      throw new UpstreamUnavailableError(`${name} is not available upstream`);
    }
  }

  /** For peers: a stream of a download this instance is running (or of `range` of it), or null. */
  streamForPeer(
    name: string,
    rangeHeader?: string,
  ): { body: Readable; length?: number; range?: ByteRange } | null {
    const download = this.downloads.get(name);
    if (!download) return null;
    const range = resolveRange(rangeHeader, download.length);
    const body = download.tryCreateReader(range);
    return body ? { body, length: download.length, range } : null;
  }

  /** A stream of the stored copy `row` records, or null if it is not stored (or storage lost it). */
  private async openStored(
    row: NarFileEntity | null,
    rangeHeader?: string,
  ): Promise<NarResponse | null> {
    if (row?.storedSize == null) return null;
    const name = row.key;
    const range = resolveRange(rangeHeader, row.storedSize);
    try {
      const body = await this.store.read(name, range);
      this.files.touch(name).catch((e: Error) => this.logger.warn(`touch ${name}: ${e.message}`));
      return { body, length: row.storedSize, range, source: 'storage' };
    } catch (e) {
      if (!(e instanceof NotFoundError)) throw e;
      this.logger.warn(`${name} is recorded as stored but missing from storage; fetching it again`);
      await this.files.markMissing(name);
      return null;
    }
  }

  /** Decides, once for all concurrent local requests, who fetches `name`. */
  private claim(name: string): Promise<Claim> {
    const running = this.downloads.get(name);
    if (running) return Promise.resolve({ kind: 'local', download: running });
    let pending = this.claims.get(name);
    if (!pending) {
      pending = this.tryClaim(name).finally(() => this.claims.delete(name));
      this.claims.set(name, pending);
    }
    return pending;
  }

  private async tryClaim(name: string): Promise<Claim> {
    const key = `nar:${name}`;
    const ttl = this.config.lock.downloadTtlMs;
    const lease = await this.metrics.timeLock('nar', () =>
      this.locker.tryAcquire(key, ttl, this.peers.selfUrl),
    );
    if (!lease) {
      const holder = await this.locker.holderInfo(key);
      if (holder && holder !== this.peers.selfUrl) return { kind: 'peer', url: holder };
      return { kind: 'retry' };
    }
    const stopRenewing = keepAlive(lease, ttl, () =>
      this.logger.warn(`lost the lock of ${name} while downloading it`),
    );
    const release = async () => {
      stopRenewing();
      await lease.release().catch((e: Error) => this.logger.warn(`releasing ${key}: ${e.message}`));
    };
    try {
      if (await this.storedNow(name)) {
        await release();
        return { kind: 'retry' }; // another holder stored it before we got the lock
      }
      const { download, finished, abort } = await this.fetcher.start(name);
      this.downloads.set(name, download);
      const settled = finished.finally(async () => {
        this.downloads.delete(name);
        this.running.delete(settled);
        await release();
        this.settling.delete(name);
      });
      this.running.set(settled, abort);
      this.settling.set(name, settled);
      return { kind: 'local', download };
    } catch (e) {
      await release();
      throw e;
    }
  }

  private async storedNow(name: string): Promise<boolean> {
    const row = await this.files.find(name);
    return row?.storedSize != null && (await this.store.stat(name)) !== null;
  }
}
