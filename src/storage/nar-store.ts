import type { FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import type { DiskSpace, SpoolArea } from './spool-area';

/**
 * Where NAR files live. Keys are narwhal's own NAR file names (`<nix32>.nar.xz`), or side documents
 * `<dir>/<name>` (listings, logs, realisations; see object-keys.ts), which `list` never returns.
 */
export interface NarStore {
  /** Where downloads spool; for the filesystem store it is on the same filesystem as the objects. */
  readonly spool: SpoolArea;
  /**
   * How a download reaches the store. `spool`: the verified spool file is handed to `putFile` (a rename
   * for local files). `stream`: `put` is fed from the download while it runs; the stream it gets ends
   * only once the download is verified and errors if it is not.
   */
  readonly writeMode: 'spool' | 'stream';
  /** Size of a stored object, or null if absent. */
  stat(key: string): Promise<{ size: number } | null>;
  /** Streams a stored object (optionally a byte range, inclusive end). Rejects with NotFoundError if absent. */
  read(key: string, range?: { start: number; end?: number }): Promise<Readable>;
  /**
   * The object's open file, for stores that keep objects in local files (the filesystem store): a
   * client is then sent its bytes through two reused buffers instead of a stream that allocates a
   * new buffer per chunk (see StoredFile). NotFoundError if it is not stored.
   */
  openFile?(key: string): Promise<FileHandle>;
  /**
   * Commits a complete, verified spool file under `key`, atomically: readers see either nothing or the
   * whole object. The spool file is consumed (moved or deleted). `synced`: the caller has already
   * flushed the spool file to disk (fsync on its own handle), so a local store need not open it again.
   */
  putFile(key: string, spoolPath: string, options?: { synced?: boolean }): Promise<void>;
  /**
   * Stores `body` under `key`, atomically: the object appears only if `body` ends cleanly; if it errors,
   * nothing appears (no partial object, no leftover upload). `size`, when known, is the exact length.
   * `alreadyStored` is asked once all bytes are in, before the object is made: true skips making it
   * (another writer stored the same object meanwhile).
   */
  put(
    key: string,
    body: Readable,
    size?: number,
    options?: { alreadyStored?: () => Promise<boolean> },
  ): Promise<void>;
  /** Removes an object; absent is not an error. */
  delete(key: string): Promise<void>;
  /** Every stored object, for fsck and accounting. */
  list(): AsyncIterable<{ key: string; size: number }>;
  /** Throws if the store cannot be written (readiness). */
  checkWritable(): Promise<void>;
  /** Space of the local disks it writes to: the spool, and the objects of a filesystem store. */
  localSpace(): Promise<DiskSpace[]>;
  /** Releases connections (S3); the store is not used afterwards. */
  close(): Promise<void>;
}

export const NAR_STORE = Symbol('NAR_STORE');
