import { EventEmitter } from 'node:events';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { DownloadFailedError, InsufficientStorageError } from '../common/errors';
import type { SpoolArea } from '../storage/spool-area';
import type { NarStore } from '../storage/nar-store';
import type { ByteRange } from './byte-range';
import type { DirectBody } from './send-chunks';
import { SpoolReader } from './spool-reader';
import type { StoredFileOptions } from './stored-file';
import type { SpoolCheck } from './verification/verifier-pool';

/**
 * Upstream chunks kept in memory after they are written to the spool, for readers that keep up with
 * the download: they get these very buffers (shared, never copied) instead of reading the spool into
 * a new buffer each. Readers further behind read the spool. Small on purpose: readers in step lag by a
 * chunk or two, and a chunk kept longer survives young-generation collections and then waits for a
 * full one (measured: 2 MiB → peak RSS 179–205 MiB in the S3 fan-out benchmark, 512 KiB → 160–168).
 */
const RECENT_BYTES = 512 * 1024;

/**
 * The first bytes of a download, kept in memory while it runs (besides the recent ones): a client
 * that joins late starts at byte 0, and without them its first read queued in libuv's thread pool
 * behind the spool writes in flight (see MAX_WRITES_AHEAD) — in the cold herd, a mean time to first
 * byte of ~100 ms instead of ~55.
 */
const HEAD_BYTES = 256 * 1024;

/**
 * Bytes of a download read from the upstream but not yet in the spool file: each chunk is written
 * while the next ones are read. Waiting for every write before reading on capped a download at one
 * chunk per write's turn through libuv's thread pool and back, which on the 2-core development
 * machine (busy with the clients and the on-box upstream) took ~1.5 ms per ~120 KiB chunk: a
 * 64 MiB NAR from a 100 MB/s upstream arrived in 1.12–1.19 s instead of 0.67 s, 0.8–0.9 s of it
 * spent waiting for writes; with writes ahead, 0.86–0.97 s. 256 KiB did as well as 1 and 4 MiB.
 */
const MAX_WRITES_AHEAD = 256 * 1024;

export type DownloadState = 'streaming' | 'verified' | 'failed';

/**
 * The spool of one running NAR download, and the readers that tail it: what every client that asks
 * for the NAR while it downloads is fed from (NarFetcher fills it; NarService hands out readers).
 *
 * Bytes go to a spool file as they arrive; each client tails the spool through its own reader
 * (positional reads on the shared handle), so a client that joins late starts from byte 0 without
 * narwhal holding the NAR in memory. The last byte is held back from readers until the whole download
 * is verified: a bad download ends every reader with an error, never with a clean end.
 */
export class NarSpool extends EventEmitter {
  state: DownloadState = 'streaming';
  error?: Error;
  /**
   * Bytes received from the upstream, readable at once: those not yet in the spool file (at most
   * MAX_WRITES_AHEAD, past `written`) are among the recent chunks in memory until they are.
   */
  arrived = 0;
  /** Bytes written to the spool file. */
  written = 0;
  readonly path: string;
  private handle?: FileHandle;
  /** Creating the spool file, once started (see `open`). */
  private opening?: Promise<FileHandle>;
  /** Set once the upstream body has ended (before verification). */
  received = false;
  private users = 1; // the writer
  private spoolClosed = false;
  private readers = 0;
  /** The last upstream chunks (up to RECENT_BYTES), oldest first, with their spool offsets. */
  private readonly recent: { offset: number; chunk: Buffer }[] = [];
  private recentBytes = 0;
  /** The chunks that start within the first HEAD_BYTES, for the whole download. */
  private readonly head: { offset: number; chunk: Buffer }[] = [];

  constructor(
    readonly key: string,
    area: SpoolArea,
    /** Length clients will receive, when known up front (FileSize or upstream Content-Length). */
    public length?: number,
  ) {
    super();
    this.setMaxListeners(0);
    this.path = area.newPath(key);
  }

  get readerCount(): number {
    return this.readers;
  }

  /**
   * Copies `body` into the spool while `check` verifies it; resolves once it is verified (readers
   * may finish) and every byte is in the spool file, rejects (and fails every reader) otherwise — at
   * once when the check fails mid-way (e.g. a decompression bomb) or the body runs past the
   * announced length. The spool file stays for the caller to commit.
   *
   * Readers get each chunk as it arrives, from memory; it is written to the file meanwhile (see
   * MAX_WRITES_AHEAD). A check that reads the spool file (a verifier thread) is told of each chunk
   * once it and every one before it are in the file; one that takes the chunks themselves
   * (`checksChunks`: a small NAR, checked on this thread) as they arrive, so that a small NAR's
   * last byte does not wait for the file.
   */
  async receive(body: AsyncIterable<Buffer>, check: SpoolCheck): Promise<void> {
    const chunks = body[Symbol.asyncIterator]();
    const failFast = new FailFast(check.failed);
    let landed: Promise<void> = Promise.resolve();
    try {
      this.handle = await this.open();
      for (;;) {
        const next = await failFast.wait(chunks.next());
        if (next.done) break;
        const chunk = next.value;
        if (this.length !== undefined && this.arrived + chunk.length > this.length) {
          throw new DownloadFailedError(
            `upstream sent more than the ${this.length} bytes announced`,
          );
        }
        const write = this.writeAll(chunk, this.arrived);
        this.remember(chunk);
        this.arrived += chunk.length;
        if (check.checksChunks) check.grew(this.arrived, chunk);
        // Settles only once this write and every one before it have: after a failure, waiting
        // for `landed` still waits for the writes in flight.
        landed = Promise.allSettled([landed, write]).then(([before, own]) => {
          if (before.status === 'rejected') throw before.reason;
          if (own.status === 'rejected') throw own.reason;
          this.written += chunk.length;
          if (!check.checksChunks) check.grew(this.written, chunk);
        });
        landed.catch(() => undefined); // awaited below; a failed write is not unhandled meanwhile
        this.emit('progress');
        if (this.arrived - this.written > MAX_WRITES_AHEAD) await failFast.wait(landed);
      }
      this.received = true;
      this.emit('progress');
      if (this.length !== undefined && this.length !== this.arrived) {
        throw new DownloadFailedError(`upstream sent ${this.arrived} of ${this.length} bytes`);
      }
      if (check.checksChunks) await this.verified(check);
      await failFast.wait(landed);
      if (!check.checksChunks) await this.verified(check);
    } catch (e) {
      check.abandon();
      const error = asDownloadError(e);
      this.fail(error);
      await landed.catch(() => undefined); // no write of this spool runs after receive settles
      throw error;
    }
  }

  /**
   * Creates the spool file (once; `receive` does it when nothing did before): the fetcher starts it
   * while the upstream is still to answer, so that a small NAR's first byte does not wait for it.
   */
  open(): Promise<FileHandle> {
    if (!this.opening) {
      this.opening = open(this.path, 'wx+', 0o600);
      this.opening.catch(() => undefined); // reported by receive, or ignored by finishWriting
    }
    return this.opening;
  }

  /** Waits for `check` to pass on all that arrived; then readers may have the last byte. */
  private async verified(check: SpoolCheck): Promise<void> {
    await check.finish(this.arrived);
    this.length = this.arrived;
    this.state = 'verified';
    this.emit('progress');
  }

  /** Verified, and every byte in the spool file (what sendfile may send from it). */
  get inFile(): boolean {
    return this.state === 'verified' && this.written === this.arrived;
  }

  /**
   * A copy of the whole verified NAR when it is among the first chunks kept in memory (see
   * HEAD_BYTES), else undefined: a small NAR just downloaded is remembered without reading it back.
   */
  wholeInMemory(): Buffer | undefined {
    if (this.state !== 'verified' || this.arrived > HEAD_BYTES) return undefined;
    let held = 0;
    for (const { chunk } of this.head) held += chunk.length;
    return held === this.arrived
      ? Buffer.concat(
          this.head.map((h) => h.chunk),
          held,
        )
      : undefined;
  }

  /** Marks the download failed before any byte (or mid-way); readers end with the error. */
  fail(error: Error): void {
    if (this.state === 'failed') return;
    this.state = 'failed';
    this.error = error;
    this.emit('progress');
  }

  /**
   * Flushes the received bytes to disk through the writer's own handle, so that committing the spool
   * (a rename) does not have to open the file again to do it.
   */
  async sync(): Promise<void> {
    if (!this.handle) throw new Error(`${this.key}: the spool is not open`);
    await this.handle.sync();
  }

  /** Commits the verified spool to a store that takes spool files (`writeMode` `spool`). */
  async commitTo(store: NarStore): Promise<void> {
    await this.sync();
    await store.putFile(this.key, this.path, { synced: true });
  }

  /** The writer is done with the spool (committed or discarded). */
  async finishWriting(discardSpool: boolean): Promise<void> {
    // A file still being created is closed (release) and deleted only once it exists.
    const opened = await this.opening?.catch(() => undefined);
    if (opened && !this.handle && !this.spoolClosed) this.handle = opened;
    if (discardSpool) await unlink(this.path).catch(() => undefined);
    await this.release();
  }

  /** A stream for one more client, or null once the spool is closed (read from storage then). */
  tryCreateReader(range?: ByteRange, options?: StoredFileOptions): (Readable & DirectBody) | null {
    return this.spoolClosed ? null : this.createReader(range, options);
  }

  /**
   * A stream of the NAR (or of `range` of it) for one client. Its last byte, too, waits until the
   * download is verified.
   */
  createReader(range?: ByteRange, options: StoredFileOptions = {}): Readable & DirectBody {
    this.users++;
    this.readers++;
    return new SpoolReader(
      this,
      () => {
        this.readers--;
        void this.release();
      },
      range,
      options,
    );
  }

  /** The spool file's descriptor while it is open (each reader keeps it open until it closes). */
  get fd(): number | undefined {
    return this.handle?.fd;
  }

  /** Reads spool bytes at `offset` (only what is in the file: below `written`). */
  async readAt(buf: Buffer, offset: number): Promise<number> {
    if (!this.handle) return 0;
    const { bytesRead } = await this.handle.read(buf, 0, buf.length, offset);
    return bytesRead;
  }

  /**
   * Spool bytes from `offset` up to `end` that are still in memory (a view of an upstream chunk, no
   * copy), or null if `offset` is no longer among the recent chunks.
   */
  recentAt(offset: number, end: number): Buffer | null {
    if (offset >= end) return null;
    const first = this.recent[0];
    const chunks = first && offset >= first.offset ? this.recent : this.head;
    for (let i = chunks.length - 1; i >= 0; i--) {
      const { offset: start, chunk } = chunks[i];
      if (offset >= start) {
        if (offset >= start + chunk.length) return null;
        return chunk.subarray(offset - start, Math.min(chunk.length, end - start));
      }
    }
    return null;
  }

  /** Bytes a reader may have now: all once verified, else all but the last. */
  get readableBytes(): number {
    return this.state === 'verified' ? this.arrived : Math.max(0, this.arrived - 1);
  }

  /**
   * Keeps a chunk that has just arrived among the recent ones (and the head), dropping the oldest
   * beyond RECENT_BYTES — only chunks already in the file: one that is not is read from here.
   */
  private remember(chunk: Buffer): void {
    if (chunk.length === 0) return;
    if (this.arrived < HEAD_BYTES) this.head.push({ offset: this.arrived, chunk });
    this.recent.push({ offset: this.arrived, chunk });
    this.recentBytes += chunk.length;
    for (;;) {
      const oldest = this.recent[0];
      if (this.recent.length <= 1 || this.recentBytes - oldest.chunk.length < RECENT_BYTES) break;
      if (oldest.offset + oldest.chunk.length > this.written) break;
      this.recentBytes -= oldest.chunk.length;
      this.recent.shift();
    }
  }

  /** Writes all of `chunk` at `position` of the spool file. */
  private async writeAll(chunk: Buffer, position: number): Promise<void> {
    let off = 0;
    while (off < chunk.length) {
      const { bytesWritten } = await this.handle!.write(
        chunk,
        off,
        chunk.length - off,
        position + off,
      );
      off += bytesWritten;
    }
  }

  private async release(): Promise<void> {
    if (--this.users > 0) return;
    this.spoolClosed = true;
    this.recent.length = 0;
    this.recentBytes = 0;
    // A verified small NAR's chunks stay for wholeInMemory (as long as this spool is referenced).
    if (this.state !== 'verified' || this.arrived > HEAD_BYTES) this.head.length = 0;
    const h = this.handle;
    this.handle = undefined;
    await h?.close().catch(() => undefined);
  }
}

/**
 * Waits for one promise after another unless `failed` rejects first — like
 * `Promise.race([next, failed])` without its cost here: each race adds a reaction to the long-lived
 * `failed` that keeps the race's result (an upstream chunk) reachable until `failed` is dropped at
 * the end of the download, so a fast download held its whole NAR in memory.
 */
class FailFast {
  private failure?: { error: Error };
  private rejectWaiting?: (error: Error) => void;

  constructor(failed: Promise<never>) {
    failed.catch((error: Error) => {
      this.failure = { error };
      this.rejectWaiting?.(error);
    });
  }

  wait<T>(next: Promise<T>): Promise<T> {
    if (this.failure) return Promise.reject(this.failure.error);
    return new Promise<T>((resolve, reject) => {
      this.rejectWaiting = reject;
      next.then(resolve, reject);
    });
  }
}

/** What a failed download reports: a full local disk says so; anything else is a broken download. */
export function asDownloadError(e: unknown): Error {
  if (e instanceof DownloadFailedError || e instanceof InsufficientStorageError) return e;
  const err = e as NodeJS.ErrnoException;
  if (err?.code === 'ENOSPC' || err?.code === 'EDQUOT') {
    return new InsufficientStorageError(`no space left on narwhal's disk (${err.code})`);
  }
  return new DownloadFailedError(`download failed: ${err?.message ?? String(e)}`);
}
