import { Inject, Injectable, Logger } from '@nestjs/common';
import type { FileHandle } from 'node:fs/promises';
import { NOTICES, type Notices } from '../locking/notices';

/** The notice that tells every instance to forget a NAR it may remember: it was deleted. */
const NAR_FORGET_TOPIC = 'nar-forget';
/** How long a NAR served from storage is known to be stored without asking the database. */
export const REMEMBER_MS = 30_000;
/**
 * How long past REMEMBER_MS a NAR held in memory is still answered from there, while the database
 * is asked again in the background (see StoredNarMemory.lookup).
 */
export const STALE_ANSWER_MS = 10 * 60_000;
/** NARs up to this size are kept in memory once served (most NARs of a closure are a few KiB). */
export const SMALL_NAR_BYTES = 64 * 1024;
/** At most this many bytes of small NARs are held in memory. */
export const SMALL_NARS_TOTAL_BYTES = 32 * 1024 * 1024;

/**
 * What this instance remembers about NARs it served from storage lately, so that a hit costs no
 * database round trip: the stored size, when the access was last written to the database (for the
 * LRU), and — for small files — the bytes themselves.
 *
 * Most NARs of a real closure are a few KiB; reading one from disk costs an open, a read and a
 * close on libuv's thread pool, which caps hits at a few thousand a second however fast the rest
 * is. Files up to `maxFileBytes` are kept in memory, the most recently served first, up to
 * `maxTotalBytes` together. A NAR's name is its FileHash, so remembered bytes never go stale: they
 * are the verified bytes stored under that name.
 *
 * An entry lives `ttlMs` (then the database is asked again, so a NAR evicted or deleted by another
 * instance is noticed within that time even if the notice about it was lost), and is forgotten at
 * once when this instance deletes the NAR or hears that another did.
 */
export interface RememberedNar {
  size: number;
  /** When the last access was written to the database (ms since the epoch). */
  touchedAt: number;
  /** Until when this entry may be used. */
  until: number;
  /** The whole file, when it is small. */
  bytes?: Buffer;
  /** True while the database is being asked whether it is still stored (see lookup). */
  checking?: boolean;
}

/** A stored NAR's size and how to open its file (see StoredNars.rememberedFile). */
export interface RememberedFile {
  size: number;
  open(): Promise<FileHandle | undefined>;
}

export interface StoredNarMemoryLimits {
  ttlMs: number;
  /** How long past `ttlMs` an entry holding the bytes may still answer (see lookup). */
  staleMs: number;
  maxEntries: number;
  maxFileBytes: number;
  maxTotalBytes: number;
}

export class StoredNarMemory {
  private readonly entries = new Map<string, RememberedNar>();
  private bytesHeld = 0;

  constructor(private readonly limits: StoredNarMemoryLimits) {}

  /** The entry for `name` if it is still fresh at `now`. */
  get(name: string, now: number): RememberedNar | undefined {
    const e = this.entries.get(name);
    if (!e) return undefined;
    if (e.until <= now) {
      this.forget(name);
      return undefined;
    }
    return e;
  }

  /**
   * The entry for `name` and whether it is past its TTL: an entry holding the bytes is still given
   * out for `staleMs` after that, so that a hit of a small NAR not asked for in a while is answered
   * at once, from memory, while the caller asks the database again in the background (renew or
   * forget). Its bytes are the verified bytes stored under its name (a NAR's name is its FileHash),
   * so a stale answer is never wrong bytes; at most it serves, once, a NAR that another instance
   * deleted and whose notice was lost. Past that, or without the bytes, it is forgotten.
   */
  lookup(name: string, now: number): { entry: RememberedNar; stale: boolean } | undefined {
    const e = this.answerable(name, now);
    return e && { entry: e, stale: e.until <= now };
  }

  /** lookup without the wrapping object, for the hot path: stale when `until <= now`. */
  answerable(name: string, now: number): RememberedNar | undefined {
    const e = this.entries.get(name);
    if (!e) return undefined;
    if (e.until > now || (e.bytes && now < e.until + this.limits.staleMs)) return e;
    this.forget(name);
    return undefined;
  }

  /** `entry` (still the one remembered for `name`) was found stored again: fresh for another TTL. */
  renew(name: string, entry: RememberedNar, now: number): void {
    if (this.entries.get(name) === entry) entry.until = now + this.limits.ttlMs;
  }

  /** Forgets `name` if `entry` is still what is remembered for it. */
  forgetEntry(name: string, entry: RememberedNar): void {
    if (this.entries.get(name) === entry) this.forget(name);
  }

  /** Remembers that `name` is stored with `size` bytes (and was touched at `touchedAt`). */
  remember(name: string, size: number, touchedAt: number, now: number): RememberedNar {
    const kept = this.entries.get(name)?.bytes;
    this.forget(name);
    const entry: RememberedNar = { size, touchedAt, until: now + this.limits.ttlMs };
    if (kept?.length === size) this.hold(entry, kept);
    this.entries.set(name, entry);
    while (this.entries.size > this.limits.maxEntries) this.forgetOldest();
    return entry;
  }

  /** Whether a file of `size` bytes is small enough to be kept in memory. */
  fits(size: number): boolean {
    return size <= this.limits.maxFileBytes && size <= this.limits.maxTotalBytes;
  }

  /** Keeps the bytes of the remembered NAR `name` (ignored unless they match its size and fit). */
  keepBytes(name: string, bytes: Buffer): void {
    const entry = this.entries.get(name);
    if (!entry || entry.bytes || bytes.length !== entry.size || !this.fits(bytes.length)) return;
    this.hold(entry, bytes);
    // Make room by dropping the bytes of the least recently remembered entries.
    for (const [key, e] of this.entries) {
      if (this.bytesHeld <= this.limits.maxTotalBytes) break;
      if (key !== name && e.bytes) this.release(e);
    }
  }

  /** Marks `name` as just served (the most recently used). */
  touch(name: string, entry: RememberedNar): void {
    this.entries.delete(name);
    this.entries.set(name, entry);
  }

  forget(name: string): void {
    const e = this.entries.get(name);
    if (!e) return;
    this.release(e);
    this.entries.delete(name);
  }

  clear(): void {
    this.entries.clear();
    this.bytesHeld = 0;
  }

  get size(): number {
    return this.entries.size;
  }

  /** Bytes of small NARs held in memory. */
  get heldBytes(): number {
    return this.bytesHeld;
  }

  private hold(entry: RememberedNar, bytes: Buffer): void {
    entry.bytes = bytes;
    this.bytesHeld += bytes.length;
  }

  private release(entry: RememberedNar): void {
    if (!entry.bytes) return;
    this.bytesHeld -= entry.bytes.length;
    entry.bytes = undefined;
  }

  private forgetOldest(): void {
    const first = this.entries.keys().next();
    if (!first.done) this.forget(first.value);
  }
}

/**
 * The process's memory of stored NARs (one per instance), which every code path that deletes a
 * NAR tells: `forgetEverywhere` forgets it here at once and on the other instances when the notice
 * reaches them.
 */
@Injectable()
export class RememberedNars extends StoredNarMemory {
  private readonly logger = new Logger('nar');

  constructor(@Inject(NOTICES) private readonly notices: Notices) {
    super({
      ttlMs: REMEMBER_MS,
      staleMs: STALE_ANSWER_MS,
      maxEntries: 50_000,
      maxFileBytes: SMALL_NAR_BYTES,
      maxTotalBytes: SMALL_NARS_TOTAL_BYTES,
    });
    notices.subscribe(NAR_FORGET_TOPIC, (name) => this.forget(name));
  }

  /** Forgets `name` here and on every other instance (call after deleting it). Never throws. */
  async forgetEverywhere(name: string): Promise<void> {
    this.forget(name);
    try {
      await this.notices.publish(NAR_FORGET_TOPIC, name);
    } catch (e) {
      this.logger.warn(
        `could not tell the other instances to forget nar/${name} (${(e as Error).message}); they forget it within ${REMEMBER_MS / 1000} s`,
      );
    }
  }
}
