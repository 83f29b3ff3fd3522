import { Inject, Injectable, Logger } from '@nestjs/common';
import type { Readable } from 'node:stream';
import { DatabaseUnavailableError, NotFoundError } from '../common/errors';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import type { NarFileEntity } from '../database/entities';
import { DatabaseHealth } from '../database/database-health';
import { NarFileRepository } from '../database/nar-file.repository';
import { TOUCH_GRANULARITY_MS } from '../database/narinfo.repository';
import { MetricsService } from '../metrics/metrics.service';
import { NAR_STORE, type NarStore } from '../storage/nar-store';
import { resolveRange, type ByteRange } from './byte-range';
import type { NarResponse } from './nar-response';
import { sendfileSupport } from './sendfile';
import { StallGuard } from './stall-guard';
import { readWhole, StoredFile, type StoredFileOptions } from './stored-file';
import { RememberedNars, type RememberedFile, type RememberedNar } from './stored-nar-memory';

/**
 * Serving NARs that are stored: from what this instance remembers of the ones it served lately
 * (RememberedNars: a hit without a database round trip, a small one without touching the disk), from
 * storage as a row records it, or — while the database is down — by name. NarService asks here
 * first and runs the download flow only for what is not stored; NarHotPath answers the fast lane's
 * hits from here.
 */
@Injectable()
export class StoredNars {
  private readonly logger = new Logger('nar');
  /** How stored files are sent (sendfile or not); spool readers hand off to sendfile the same way. */
  readonly fileOptions: StoredFileOptions;

  constructor(
    @Inject(APP_CONFIG) config: AppConfig,
    @Inject(NAR_STORE) private readonly store: NarStore,
    private readonly files: NarFileRepository,
    private readonly db: DatabaseHealth,
    private readonly metrics: MetricsService,
    /** NARs served from storage lately: a hit costs no database round trip. */
    private readonly memory: RememberedNars,
    stalls: StallGuard,
  ) {
    this.fileOptions = config.sendfile
      ? {
          sendfile: {
            stallTimeoutMs: stalls.stallTimeoutMs,
            onStalled: (res, idleMs) => stalls.drop(res, idleMs),
          },
        }
      : {};
    if (config.sendfile && !sendfileSupport.available) {
      this.logger.warn(
        `sendfile is not available (${sendfileSupport.reason}): stored NARs are read and written instead`,
      );
    }
    metrics.watchNarMemory(() => ({ entries: this.memory.size, bytes: this.memory.heldBytes }));
  }

  /**
   * The hot path of a hit (see HotHits): the whole answer of a small stored NAR that this instance
   * served lately, without touching the database or the disk; undefined for anything else.
   */
  rememberedBytes(name: string): Buffer | undefined {
    const now = Date.now();
    const entry = this.memory.answerable(name, now);
    if (!entry?.bytes) return undefined;
    if (entry.until <= now) this.checkStillStored(name, entry); // past its TTL: answered, checked
    this.servedFromMemory(name, entry, now);
    return entry.bytes;
  }

  /**
   * For the fast lane (see NarHotPath): a NAR too large to keep in memory that this instance served
   * from storage lately, and how to open its file (undefined then if it cannot be opened: the
   * request goes the long way, which finds out why); undefined for anything else.
   */
  rememberedFile(name: string): RememberedFile | undefined {
    const store = this.store;
    if (!store.openFile) return undefined;
    const entry = this.memory.get(name, Date.now());
    if (!entry || entry.bytes || this.memory.fits(entry.size)) return undefined;
    return {
      size: entry.size,
      open: async () => {
        try {
          const handle = await store.openFile!(name);
          this.servedFromMemory(name, entry, Date.now());
          return handle;
        } catch {
          return undefined;
        }
      },
    };
  }

  /**
   * Asks the database, in the background, whether a NAR answered from memory past its TTL is still
   * stored: yes renews the entry, anything else forgets it (the next request goes the long way).
   * While the database cannot be asked, the entry stays as it is and the next hit asks again.
   */
  private checkStillStored(name: string, entry: RememberedNar): void {
    if (entry.checking) return;
    entry.checking = true;
    this.files
      .find(name)
      .then(
        (row) => {
          if (row?.storedSize === entry.size) this.memory.renew(name, entry, Date.now());
          else this.memory.forgetEntry(name, entry);
        },
        (e: Error) => {
          if (!this.db.noteFailure(e)) this.logger.warn(`checking nar/${name}: ${e.message}`);
        },
      )
      .finally(() => (entry.checking = false));
  }

  /**
   * While the database is down: a NAR found in storage under its name is served (its name carries
   * the FileHash it was verified against when stored); anything else waits for the database.
   */
  async openByName(name: string, rangeHeader?: string): Promise<NarResponse> {
    const found = await this.store.stat(name);
    if (!found) throw new DatabaseUnavailableError(`${name}: the database is unavailable`);
    const range = resolveRange(rangeHeader, found.size);
    const body = await this.store.read(name, range);
    this.metrics.narRequest('hit');
    return { body, length: found.size, range, source: 'storage' };
  }

  /** A stream of the stored copy `row` records, or null if it is not stored (or storage lost it). */
  async openStored(row: NarFileEntity | null, rangeHeader?: string): Promise<NarResponse | null> {
    if (row?.storedSize == null) return null;
    const name = row.key;
    const now = Date.now();
    const entry = this.memory.remember(name, row.storedSize, row.lastAccessedAt, now);
    const opened = await this.openStoredCopy(name, entry, rangeHeader);
    if (opened) this.touchIfStale(name, entry, now);
    return opened;
  }

  /** A NAR this instance served from storage lately, without asking the database; else null. */
  async openRemembered(name: string, rangeHeader?: string): Promise<NarResponse | null> {
    const now = Date.now();
    const entry = this.memory.get(name, now);
    if (!entry) return null;
    const opened = await this.openStoredCopy(name, entry, rangeHeader);
    if (!opened) return null;
    this.servedFromMemory(name, entry, now);
    return opened;
  }

  /**
   * The stored copy of `name`: from memory when it is held there, else from storage (and kept in
   * memory when it is small and asked for whole). Null when storage has lost it: the row is then
   * marked missing, so that the flow fetches it again.
   */
  private async openStoredCopy(
    name: string,
    entry: RememberedNar,
    rangeHeader?: string,
  ): Promise<NarResponse | null> {
    const range = resolveRange(rangeHeader, entry.size);
    if (entry.bytes) {
      const body = range ? entry.bytes.subarray(range.start, range.end + 1) : entry.bytes;
      return { body, length: entry.size, range, source: 'storage' };
    }
    try {
      if (!range && this.memory.fits(entry.size)) {
        const bytes = await readWhole(await this.store.read(name), entry.size);
        if (bytes) {
          this.memory.keepBytes(name, bytes);
          return { body: bytes, length: entry.size, source: 'storage' };
        }
        // The file is not the size its row says: stream it as the row says, as before.
      }
      const body = await this.openBody(name, entry.size, range);
      return { body, length: entry.size, range, source: 'storage' };
    } catch (e) {
      if (!(e instanceof NotFoundError)) throw e;
      this.memory.forget(name);
      this.logger.warn(`${name} is recorded as stored but missing from storage; fetching it again`);
      await this.files.markMissing(name);
      return null;
    }
  }

  /** The stored file of `name` (`size` bytes) to send whole or as `range`. */
  private async openBody(
    name: string,
    size: number,
    range: ByteRange | undefined,
  ): Promise<Readable | StoredFile> {
    if (!this.store.openFile) return this.store.read(name, range);
    const handle = await this.store.openFile(name);
    return new StoredFile(handle, range?.start ?? 0, range?.end ?? size - 1, this.fileOptions);
  }

  /** A hit answered from what this instance remembers: counted, and its access recorded. */
  private servedFromMemory(name: string, entry: RememberedNar, now: number): void {
    this.metrics.narRequest('hit');
    this.memory.touch(name, entry);
    this.touchIfStale(name, entry, now);
  }

  /**
   * A NAR this instance has just downloaded and stored is remembered as one served from storage
   * now, so that the next GET of it is a hot hit (in the fast lane: from memory, or by sendfile)
   * rather than a database lookup in node:http. Its clients were sent the download itself, so
   * without this a `nix copy` of a closure it had just fetched handed its connection to node:http
   * at the first such NAR, and every request after it went there too. A small NAR is kept in
   * memory: the download's own (verified) bytes when `bytes` still has them; else one of a
   * local store is read back (it was just written: the page cache has it), and an S3 object is not
   * (the next GET skips the database, then reads it once).
   */
  async rememberDownloaded(
    name: string,
    size: number,
    bytes?: () => Buffer | undefined,
  ): Promise<void> {
    const now = Date.now();
    this.memory.remember(name, size, now, now);
    if (!this.memory.fits(size)) return;
    const own = bytes?.();
    if (own?.length === size) return this.memory.keepBytes(name, own);
    if (!this.store.openFile) return;
    try {
      const read = await readWhole(await this.store.read(name), size);
      if (read) this.memory.keepBytes(name, read);
    } catch {
      // Not readable now: the next GET reads it (or finds it gone) the usual way.
    }
  }

  /** Records the access in the database at most once per TOUCH_GRANULARITY_MS per NAR. */
  private touchIfStale(name: string, entry: RememberedNar, now: number): void {
    if (now - entry.touchedAt < TOUCH_GRANULARITY_MS) return;
    entry.touchedAt = now;
    this.files.touch(name, now).catch((e: Error) => {
      if (!this.db.noteFailure(e)) this.logger.warn(`touch ${name}: ${e.message}`);
    });
  }
}
