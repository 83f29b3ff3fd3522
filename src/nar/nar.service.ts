import { Inject, Injectable, Logger } from '@nestjs/common';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { NotFoundError, ServiceUnavailableError, UpstreamUnavailableError } from '../common/errors';
import { SingleFlight } from '../common/single-flight';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import type { NarFileEntity } from '../database/entities';
import { DatabaseHealth } from '../database/database-health';
import { NarFileRepository } from '../database/nar-file.repository';
import { isUploadOrigin } from '../database/upload-origin';
import { narLockKey } from '../locking/lock-keys';
import { INSTANCE, parseHolderInfo, type Instance } from '../instances/instance';
import { TakeoverLocks } from '../instances/takeover-locks';
import { LOCKER, type Locker } from '../locking/locker';
import { MetricsService } from '../metrics/metrics.service';
import { parseNarFileName } from '../nix/compression';
import { NAR_STORE, type NarStore } from '../storage/nar-store';
import { UpstreamService } from '../upstream/upstream.service';
import { ActiveDownloads, type ActiveDownload } from './active-downloads';
import { resolveRange, type ByteRange } from './byte-range';
import { NarFetcher } from './nar-fetcher';
import { PeerClient } from './peer-client';
import type { NarResponse } from './nar-response';
import { StoredNars } from './stored-nars';

/** What a prefetch did: found it stored or running (here or on a peer), downloaded it, or failed. */
export type NarPrefetchResult = 'stored' | 'running' | 'downloaded' | 'failed';

/** What a row lookup gives while the database is down. */
const WITHOUT_DATABASE: unique symbol = Symbol('without database');
/** Found stored (recorded and in storage) once the NAR's lock is held. */
const STORED: unique symbol = Symbol('stored');

/** Who is fetching a NAR that is not stored yet. */
type Claim =
  | { kind: 'local'; download: ActiveDownload }
  /** Another instance holds the NAR's lock (`key`) and downloads it: stream it from `url`. */
  | { kind: 'peer'; url: string; key: string }
  | { kind: 'retry' };

/**
 * The NAR download flow. Stored → stream from storage. Otherwise exactly one download per NAR across
 * all instances: the instance that takes the NAR's lock downloads it (NarFetcher) and every client of
 * that instance streams from its spool as it arrives; clients of other instances stream it from the
 * lock holder (whose URL is in the lock), or — if it cannot be reached — wait for it to be stored.
 */
@Injectable()
export class NarService {
  private readonly logger = new Logger('nar');
  /** Concurrent local requests for a NAR that is not stored decide once who fetches it. */
  private readonly claims = new SingleFlight<string, Claim>();
  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    @Inject(NAR_STORE) private readonly store: NarStore,
    @Inject(LOCKER) private readonly locker: Locker,
    private readonly files: NarFileRepository,
    private readonly db: DatabaseHealth,
    private readonly upstream: UpstreamService,
    private readonly fetcher: NarFetcher,
    private readonly peers: PeerClient,
    private readonly locks: TakeoverLocks,
    @Inject(INSTANCE) private readonly instance: Instance,
    private readonly active: ActiveDownloads,
    private readonly metrics: MetricsService,
    /** What is stored, and how it is served. */
    private readonly stored: StoredNars,
  ) {}

  /**
   * GET: a stream of the NAR, from storage, from this instance's download or from a peer's; with a
   * `Range` header (Nix resuming an interrupted download), only that part when the length is known.
   * Throws RangeNotSatisfiableError for a range past the end.
   */
  async get(name: string, rangeHeader?: string): Promise<NarResponse> {
    parseNarFileName(name); // 400 for anything that is not a NAR file name
    const remembered = await this.stored.openRemembered(name, rangeHeader);
    if (remembered) return remembered;
    const { maxAttempts, initialDelayMs, maxDelayMs, jitter } = this.config.lock.retry;
    let delay = initialDelayMs;
    for (let attempt = 0; attempt < maxAttempts; attempt++) {
      const row = await this.findRow(name);
      if (row === WITHOUT_DATABASE) return this.stored.openByName(name, rangeHeader);
      const stored = await this.stored.openStored(row, rangeHeader);
      if (stored) {
        this.metrics.narRequest('hit');
        return stored;
      }
      const joining = this.active.get(name) !== undefined || this.claims.has(name);
      const claim = await this.claim(name);
      if (claim.kind === 'local') {
        const { spool, settled } = claim.download;
        const range = resolveRange(rangeHeader, spool.length);
        // A download that already failed is not joined: once it is cleaned up, the next attempt
        // starts a new one.
        const body =
          spool.state === 'failed' ? null : spool.tryCreateReader(range, this.stored.fileOptions);
        if (body) {
          this.metrics.narRequest(joining ? 'joined' : 'download');
          return { body, length: spool.length, range, source: 'download' };
        }
        // It ended in the meantime (stored or discarded): look again once it has settled.
        await settled;
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
        // Not streamable from the holder: if it is gone (killed, restarted), take over at once.
        if (await this.locks.breakIfGone(claim.key, 'nar')) continue;
      }
      // The holder finished, failed, or cannot be reached: look again after a pause.
      await sleep(delay * (1 + jitter * (2 * Math.random() - 1)));
      delay = Math.min(maxDelayMs, delay * 2);
    }
    throw new ServiceUnavailableError(`${name}: another instance is still downloading it`);
  }

  /**
   * For the prefetcher: downloads `name` the way a client's GET would (the same claim, lock and
   * verification; clients that ask meanwhile join it) without streaming it anywhere, and resolves
   * once it has settled. Nothing is started when it is stored, already running here, or being
   * downloaded by another instance. Rejects when no upstream serves it.
   */
  async prefetch(name: string): Promise<NarPrefetchResult> {
    if (this.active.get(name) !== undefined || this.claims.has(name)) return 'running';
    if (await this.storedNow(name)) return 'stored';
    const claim = await this.claim(name);
    if (claim.kind === 'peer') return 'running';
    if (claim.kind === 'retry') return (await this.storedNow(name)) ? 'stored' : 'running';
    await claim.download.settled;
    return (await this.storedNow(name)) ? 'downloaded' : 'failed';
  }

  /** HEAD: the size if the NAR is stored or can be fetched, without downloading it. */
  async head(name: string): Promise<{ length?: number }> {
    parseNarFileName(name);
    const row = await this.findRow(name);
    if (row === WITHOUT_DATABASE) return { length: (await this.stored.openByName(name)).length };
    if (row?.storedSize != null) {
      const s = await this.store.stat(name);
      if (s) return { length: s.size };
    }
    const running = this.active.get(name);
    if (running) return { length: running.spool.length };
    if (!row) throw new NotFoundError(`${name} is not known`);
    if (isUploadOrigin(row.upstreamUrl)) throw new NotFoundError(`${name} is not stored`);
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
    const spool = this.active.get(name)?.spool;
    if (!spool) return null;
    const range = resolveRange(rangeHeader, spool.length);
    const body = spool.tryCreateReader(range);
    return body ? { body, length: spool.length, range } : null;
  }

  /** The NAR's row, or WITHOUT_DATABASE when the database is down. */
  private async findRow(name: string): Promise<NarFileEntity | null | typeof WITHOUT_DATABASE> {
    try {
      return await this.files.find(name);
    } catch (e) {
      if (this.db.noteFailure(e)) return WITHOUT_DATABASE;
      throw e;
    }
  }

  /** Decides, once for all concurrent local requests, who fetches `name`. */
  private claim(name: string): Promise<Claim> {
    const running = this.active.get(name);
    if (running) return Promise.resolve({ kind: 'local', download: running });
    return this.claims.run(name, () => this.tryClaim(name));
  }

  private async tryClaim(name: string): Promise<Claim> {
    const key = narLockKey(name);
    const ttl = this.config.lock.downloadTtlMs;
    const lease = await this.locks.tryAcquire(key, ttl, 'nar');
    if (!lease) {
      // Held by a live instance (a gone one's lease was just taken over): stream from it.
      const holder = parseHolderInfo((await this.locker.holderInfo(key)) ?? '');
      if (holder && holder.url !== this.instance.url) return { kind: 'peer', url: holder.url, key };
      return { kind: 'retry' };
    }
    const stopRenewing = this.locks.keepAlive(lease, ttl, 'nar');
    const release = async () => {
      stopRenewing();
      await lease.release().catch((e: Error) => this.logger.warn(`releasing ${key}: ${e.message}`));
    };
    try {
      const row = await this.rowUnlessStored(name);
      if (row === STORED) {
        await release();
        return { kind: 'retry' }; // another holder stored it before we got the lock
      }
      // The row read under the lock is what the download starts from (no second lookup).
      const started = await this.fetcher.start(name, row);
      started.finished.then(
        (stored) =>
          stored
            ? this.stored.rememberDownloaded(name, started.spool.written, () =>
                started.spool.wholeInMemory(),
              )
            : undefined,
        () => undefined, // reported where the download is awaited
      );
      return { kind: 'local', download: this.active.add(started, release) };
    } catch (e) {
      await release();
      throw e;
    }
  }

  private async storedNow(name: string): Promise<boolean> {
    return (await this.rowUnlessStored(name)) === STORED;
  }

  /** STORED when `name` is stored (recorded and in storage), else its row (or null: none). */
  private async rowUnlessStored(name: string): Promise<NarFileEntity | null | typeof STORED> {
    const row = await this.files.find(name);
    return row?.storedSize != null && (await this.store.stat(name)) !== null ? STORED : row;
  }
}
