import { DataSource, In, IsNull, MoreThan, Not } from 'typeorm';
import { DownloadFailedError, NotFoundError } from '../common/errors';
import { NarFileEntity, NarInfoEntity } from '../database/entities';
import { NarFileRepository } from '../database/nar-file.repository';
import { NarVerifier, type NarExpectations } from '../nar/nar-verifier';
import { isCompression } from '../nix/compression';
import { canDecompress } from '../nix/decompress';
import type { NarStore } from '../storage/nar-store';
import { inspectorFor, type ObjectInfo, type ObjectInspector } from './object-info';

/**
 * Checks the database and the NAR store against each other while narwhal may be serving, and with
 * `repair` removes what is broken so that it is fetched again:
 *
 * | kind             | what                                                       | repair                          |
 * |------------------|------------------------------------------------------------|---------------------------------|
 * | missing          | nar_files row marked stored, no object                     | mark the row not stored         |
 * | orphan           | object with no row marked stored, older than the grace     | delete the object               |
 * | size-mismatch    | object size ≠ stored_size, or ≠ file_size when known        | mark not stored, delete object  |
 * | hash-mismatch    | (--verify-content) FileHash/FileSize or NarHash/NarSize off | mark not stored, delete object  |
 * | dangling-narinfo | narinfo whose nar_key has no nar_files row                 | delete the narinfo              |
 * | unreadable       | could not be checked (I/O, network or query error)         | none: reported, counts as left  |
 *
 * Safe while narwhal serves: it reads in key-ordered pages (no long transaction, bounded memory), looks
 * again at the row and the object right before it reports or changes anything, and never deletes an
 * object that changed since it was checked (see ObjectInfo.version). Losing a race with narwhal costs
 * at most one re-download: a row marked stored whose object is gone is re-fetched on its next request.
 */

export type ProblemKind =
  'missing' | 'orphan' | 'size-mismatch' | 'hash-mismatch' | 'dangling-narinfo' | 'unreadable';

export const PROBLEM_KINDS: readonly ProblemKind[] = [
  'missing',
  'orphan',
  'size-mismatch',
  'hash-mismatch',
  'dangling-narinfo',
  'unreadable',
];

/**
 * none: only checked (no --repair, or nothing fsck can do). would-repair: --repair --dry-run.
 * repaired: fixed. resolved: narwhal changed the row or object itself between the check and the
 * repair, so nothing was left to do. failed: the repair itself failed (the problem remains).
 */
export type ProblemAction = 'none' | 'would-repair' | 'repaired' | 'resolved' | 'failed';

export interface FsckProblem {
  kind: ProblemKind;
  /** The NAR key, or the narinfo hash for dangling-narinfo. */
  key: string;
  detail: string;
  action: ProblemAction;
}

export type FsckPhase = 'stored' | 'objects' | 'narinfos';

export type FsckEvent =
  | { type: 'phase'; phase: FsckPhase; total?: number }
  | { type: 'progress'; phase: FsckPhase; done: number; total?: number }
  | { type: 'phase-done'; phase: FsckPhase; done: number }
  | { type: 'problem'; problem: FsckProblem }
  | { type: 'warning'; message: string };

export interface FsckOptions {
  repair: boolean;
  dryRun: boolean;
  verifyContent: boolean;
  /** Objects that appeared or changed more recently than this are not orphans (yet). */
  orphanGraceMs: number;
  /** Stat/read this many objects at once; default 16, or 4 with verifyContent. */
  concurrency?: number;
  /** Clock (epoch ms), for tests. */
  now?: () => number;
}

export const DEFAULT_ORPHAN_GRACE_MS = 15 * 60_000;

export interface FsckDeps {
  ds: DataSource;
  store: NarStore;
  options: FsckOptions;
  report?: (event: FsckEvent) => void;
  /** How to look at one object; default inspectorFor(store). */
  inspect?: ObjectInspector;
}

export interface FsckSummary {
  /** nar_files rows marked stored that were checked. */
  storedNars: number;
  /** Of those, checked against a hash (--verify-content). */
  contentVerified: number;
  /** With --verify-content: rows with nothing to check the content against (size checked only). */
  contentUnverifiable: number;
  /** Objects listed in storage. */
  objects: number;
  /** Objects without a stored row left alone because they are younger than the grace (or of unknown age). */
  youngObjectsSkipped: number;
  narInfos: number;
  found: Record<ProblemKind, number>;
  repaired: Record<ProblemKind, number>;
  /** With --repair --dry-run: what --repair would fix. */
  wouldRepair: Record<ProblemKind, number>;
  /** Problems found and not repaired (all of them without --repair, or with --dry-run). */
  remaining: number;
}

/** Thrown before any change when storage and database look like they belong to different caches. */
export class FsckRefusedError extends Error {
  override name = 'FsckRefusedError';
}

const PAGE = 500;
/** Sanity check before repairing: this many sampled, every one bad → refuse. */
const SANITY_SAMPLE = 50;
const SANITY_MIN = 20;

export async function fsck(deps: FsckDeps): Promise<FsckSummary> {
  return new FsckRun(deps).run();
}

class FsckRun {
  private readonly ds: DataSource;
  private readonly store: NarStore;
  private readonly files: NarFileRepository;
  private readonly inspect: ObjectInspector;
  private readonly options: FsckOptions;
  private readonly emit: (event: FsckEvent) => void;
  private readonly now: () => number;
  private readonly concurrency: number;
  private readonly summary: FsckSummary = {
    storedNars: 0,
    contentVerified: 0,
    contentUnverifiable: 0,
    objects: 0,
    youngObjectsSkipped: 0,
    narInfos: 0,
    found: zeroCounts(),
    repaired: zeroCounts(),
    wouldRepair: zeroCounts(),
    remaining: 0,
  };

  constructor(deps: FsckDeps) {
    this.ds = deps.ds;
    this.store = deps.store;
    this.files = new NarFileRepository(deps.ds);
    this.inspect = deps.inspect ?? inspectorFor(deps.store);
    this.options = deps.options;
    this.emit = deps.report ?? (() => undefined);
    this.now = deps.options.now ?? Date.now;
    this.concurrency = deps.options.concurrency ?? (deps.options.verifyContent ? 4 : 16);
  }

  /** True when problems are to be fixed for real. */
  private get repairing(): boolean {
    return this.options.repair && !this.options.dryRun;
  }

  async run(): Promise<FsckSummary> {
    await this.sanityCheck();
    await this.checkStoredNars();
    await this.checkObjects();
    await this.checkNarInfos();
    const s = this.summary;
    s.remaining = PROBLEM_KINDS.reduce((n, k) => n + s.found[k] - s.repaired[k], 0);
    return s;
  }

  // ---- sanity: wrong storage settings must not turn into mass repairs -------------------------------

  /**
   * A mistyped storage path or prefix makes every stored NAR look missing; a database of another cache
   * makes every object look orphaned. Repairing either would throw the cache away, so when every one of
   * a sample is bad, refuse to repair (and warn when only checking).
   */
  private async sanityCheck(): Promise<void> {
    const rows = await this.ds.getRepository(NarFileEntity).find({
      select: { key: true },
      where: { storedSize: Not(IsNull()) },
      order: { key: 'ASC' },
      take: SANITY_SAMPLE,
    });
    let missing = 0;
    for (const row of rows) if ((await this.inspect(row.key).catch(() => null)) === null) missing++;
    if (rows.length >= SANITY_MIN && missing === rows.length) {
      this.refuseOrWarn(
        `all ${missing} sampled NARs the database records as stored are missing from storage — ` +
          'do the storage settings point at this cache? (narwhal re-fetches a missing NAR by itself ' +
          'when it is requested)',
      );
    }

    const sample: string[] = [];
    for await (const o of this.store.list()) {
      sample.push(o.key);
      if (sample.length >= SANITY_SAMPLE) break;
    }
    const stored = await this.storedKeys(sample);
    if (sample.length >= SANITY_MIN && stored.size === 0) {
      this.refuseOrWarn(
        `none of ${sample.length} sampled objects in storage is recorded as stored in the database — ` +
          'does the database setting point at this cache? (to empty the store, delete it yourself)',
      );
    }
  }

  private refuseOrWarn(message: string): void {
    if (this.repairing) throw new FsckRefusedError(`refusing to repair: ${message}`);
    this.emit({ type: 'warning', message });
  }

  // ---- phase 1: rows marked stored → object present, right size, right content ----------------------

  private async checkStoredNars(): Promise<void> {
    const repo = this.ds.getRepository(NarFileEntity);
    const total = await repo.countBy({ storedSize: Not(IsNull()) });
    this.emit({ type: 'phase', phase: 'stored', total });
    let last = '';
    for (;;) {
      const page = await repo.find({
        where: { storedSize: Not(IsNull()), key: MoreThan(last) },
        order: { key: 'ASC' },
        take: PAGE,
      });
      if (page.length === 0) break;
      last = page[page.length - 1].key;
      await forEachConcurrently(page, this.concurrency, async (row) => {
        await this.guarded(row.key, () => this.checkStoredNar(row));
        this.summary.storedNars++;
        this.emit({ type: 'progress', phase: 'stored', done: this.summary.storedNars, total });
      });
    }
    this.emit({ type: 'phase-done', phase: 'stored', done: this.summary.storedNars });
  }

  private async checkStoredNar(row: NarFileEntity): Promise<void> {
    let info: ObjectInfo | null;
    try {
      info = await this.inspect(row.key);
    } catch (e) {
      return this.problem('unreadable', row.key, `could not be looked up: ${message(e)}`);
    }
    if (!info) return this.onMissing(row);
    const sizeIssue = sizeMismatch(row, info.size);
    if (sizeIssue) return this.onBadObject('size-mismatch', row, info, sizeIssue);
    if (!this.options.verifyContent) return;

    const verifier = new NarVerifier(expectationsOf(row));
    if (!verifier.checksContent) {
      this.summary.contentUnverifiable++;
      return;
    }
    try {
      const body = await this.store.read(row.key);
      // for-await destroys `body` if the loop throws; update() waits while the decompressor is full.
      for await (const chunk of body as AsyncIterable<Buffer>) await verifier.update(chunk);
      // A read that ended early (e.g. a cut connection) says nothing about the content: never delete
      // for it. (Bad content fails in update() mid-way or in finish(), as DownloadFailedError.)
      if (verifier.bytes !== info.size) {
        throw new Error(`the read ended after ${verifier.bytes} of ${info.size} bytes`);
      }
      await verifier.finish();
      this.summary.contentVerified++;
    } catch (e) {
      verifier.destroy();
      if (e instanceof NotFoundError) return this.onMissing(row);
      if (e instanceof DownloadFailedError) {
        this.summary.contentVerified++;
        return this.onBadObject('hash-mismatch', row, info, e.message);
      }
      return this.problem('unreadable', row.key, `could not be read: ${message(e)}`);
    }
  }

  private async onMissing(row: NarFileEntity): Promise<void> {
    // Look again: narwhal may have evicted it (row and object) or re-stored it since the page was read.
    const now = await this.files.find(row.key);
    if (now?.storedSize == null) return;
    if ((await this.inspect(row.key)) !== null) return;
    await this.problem(
      'missing',
      row.key,
      `recorded as stored (${now.storedSize} bytes) but not in storage`,
      async () => {
        await this.files.markMissing(row.key);
        return true;
      },
    );
  }

  /** A present object that is wrong: mark the row not stored (stop serving it), then delete the object. */
  private async onBadObject(
    kind: 'size-mismatch' | 'hash-mismatch',
    row: NarFileEntity,
    checked: ObjectInfo,
    detail: string,
  ): Promise<void> {
    const now = await this.files.find(row.key);
    if (now?.storedSize !== row.storedSize) return; // evicted or re-stored meanwhile
    if (!sameObject(checked, await this.inspect(row.key))) return; // replaced meanwhile
    await this.problem(kind, row.key, detail, async () => {
      await this.files.markMissing(row.key);
      // From here narwhal may start a new download; its commit creates a new object version.
      const current = await this.inspect(row.key);
      if (current === null) return true;
      if (!sameObject(checked, current)) return false;
      await this.store.delete(row.key);
      return true;
    });
  }

  // ---- phase 2: objects → a row marked stored ---------------------------------------------------------

  private async checkObjects(): Promise<void> {
    this.emit({ type: 'phase', phase: 'objects' });
    let batch: string[] = [];
    const flush = async () => {
      const keys = batch;
      batch = [];
      const stored = await this.storedKeys(keys);
      await forEachConcurrently(keys, this.concurrency, async (key) => {
        if (!stored.has(key)) await this.guarded(key, () => this.checkUnreferenced(key));
        this.summary.objects++;
        this.emit({ type: 'progress', phase: 'objects', done: this.summary.objects });
      });
    };
    for await (const o of this.store.list()) {
      batch.push(o.key);
      if (batch.length >= PAGE) await flush();
    }
    await flush();
    this.emit({ type: 'phase-done', phase: 'objects', done: this.summary.objects });
  }

  private async checkUnreferenced(key: string): Promise<void> {
    let info: ObjectInfo | null;
    try {
      info = await this.inspect(key);
    } catch (e) {
      return this.problem('unreadable', key, `could not be looked up: ${message(e)}`);
    }
    if (!info) return; // deleted meanwhile (LRU deletes rows first, then objects)
    const age = info.changedAt === undefined ? undefined : this.now() - info.changedAt;
    if (age === undefined || age < this.options.orphanGraceMs) {
      // Possibly a download between committing the object and marking its row stored.
      this.summary.youngObjectsSkipped++;
      return;
    }
    const row = await this.files.find(key);
    if (row?.storedSize != null) return; // its download has been recorded meanwhile
    const why = row ? 'its row is not marked stored' : 'no row';
    await this.problem(
      'orphan',
      key,
      `${info.size} bytes, ${why}, last changed ${formatAge(age)} ago`,
      async () => {
        // Right before deleting, look once more: the row may have been marked stored just now.
        if ((await this.files.find(key))?.storedSize != null) return false;
        if (!sameObject(info, await this.inspect(key))) return false;
        await this.store.delete(key);
        return true;
      },
    );
  }

  // ---- phase 3: narinfos → a nar_files row ------------------------------------------------------------

  private async checkNarInfos(): Promise<void> {
    const total = await this.ds.getRepository(NarInfoEntity).count();
    this.emit({ type: 'phase', phase: 'narinfos', total });
    // The database finds the dangling ones (anti-join on the nar_key index); pages keep memory bounded.
    let last = '';
    for (;;) {
      const page = await this.ds
        .getRepository(NarInfoEntity)
        .createQueryBuilder('n')
        .leftJoin(NarFileEntity, 'f', 'f.key = n.narKey')
        .select(['n.hash', 'n.narKey'])
        .where('f.key IS NULL')
        .andWhere('n.hash > :last', { last })
        .orderBy('n.hash', 'ASC')
        .limit(PAGE)
        .getMany();
      if (page.length === 0) break;
      last = page[page.length - 1].hash;
      for (const n of page) {
        await this.problem(
          'dangling-narinfo',
          n.hash,
          `points at NAR ${n.narKey}, which has no nar_files row`,
          () => this.deleteDanglingNarInfo(n.hash),
        );
      }
    }
    this.summary.narInfos = total;
    this.emit({ type: 'phase-done', phase: 'narinfos', done: total });
  }

  /** Deletes the narinfo (its references and signatures cascade) only if it still dangles. */
  private async deleteDanglingNarInfo(hash: string): Promise<boolean> {
    const q = (name: string) => this.ds.driver.escape(name);
    const result = await this.ds
      .createQueryBuilder()
      .delete()
      .from(NarInfoEntity)
      .where(`${q('hash')} = :hash`, { hash })
      .andWhere(
        `NOT EXISTS (SELECT 1 FROM ${q('nar_files')} f WHERE f.${q('key')} = ${q('narinfos')}.${q('nar_key')})`,
      )
      .execute();
    return (result.affected ?? 0) > 0;
  }

  // ---- shared ----------------------------------------------------------------------------------------

  /** One object's trouble (a failed stat, read or query) is reported; it does not stop the run. */
  private async guarded(key: string, check: () => Promise<void>): Promise<void> {
    try {
      await check();
    } catch (e) {
      await this.problem('unreadable', key, `could not be checked: ${message(e)}`);
    }
  }

  /**
   * Records and reports a problem; with --repair runs `fix`, which resolves false when narwhal changed
   * the row or object itself in the meantime (then nothing is left to repair).
   */
  private async problem(
    kind: ProblemKind,
    key: string,
    detail: string,
    fix?: () => Promise<boolean>,
  ): Promise<void> {
    this.summary.found[kind]++;
    let action: ProblemAction = 'none';
    if (fix && this.options.repair) {
      if (this.options.dryRun) {
        action = 'would-repair';
        this.summary.wouldRepair[kind]++;
      } else {
        try {
          action = (await fix()) ? 'repaired' : 'resolved';
          this.summary.repaired[kind]++; // either way, the problem is gone
        } catch (e) {
          action = 'failed';
          detail += `; repair failed: ${message(e)}`;
        }
      }
    }
    this.emit({ type: 'problem', problem: { kind, key, detail, action } });
  }

  /** Those of `keys` whose row is marked stored. */
  private async storedKeys(keys: string[]): Promise<Set<string>> {
    if (keys.length === 0) return new Set();
    const rows = await this.ds.getRepository(NarFileEntity).find({
      select: { key: true, storedSize: true },
      where: { key: In(keys), storedSize: Not(IsNull()) },
    });
    return new Set(rows.map((r) => r.key));
  }
}

function zeroCounts(): Record<ProblemKind, number> {
  return Object.fromEntries(PROBLEM_KINDS.map((k) => [k, 0])) as Record<ProblemKind, number>;
}

/** What the stored object of `row` must match (as the NAR download flow checks it). */
function expectationsOf(row: NarFileEntity): NarExpectations {
  const compression = isCompression(row.compression) ? row.compression : 'none';
  // NarHash needs a decoder; '' marks a row recorded without a narinfo (FileHash only).
  const narHash =
    isCompression(row.compression) && canDecompress(row.compression) && row.narHash
      ? row.narHash
      : undefined;
  return {
    compression,
    fileHash: row.fileHash ?? undefined,
    fileSize: row.fileSize ?? undefined,
    narHash,
    narSize: narHash ? row.narSize : undefined,
  };
}

function sizeMismatch(row: NarFileEntity, size: number): string | null {
  if (row.storedSize !== null && size !== row.storedSize) {
    return `object has ${size} bytes, the database records ${row.storedSize} stored`;
  }
  if (row.fileSize !== null && size !== row.fileSize) {
    return `object has ${size} bytes, FileSize says ${row.fileSize}`;
  }
  return null;
}

/** Same object version: by version when the store gives one, else by size. */
function sameObject(a: ObjectInfo, b: ObjectInfo | null): boolean {
  if (b === null) return false;
  if (a.version !== undefined || b.version !== undefined) return a.version === b.version;
  return a.size === b.size;
}

function formatAge(ms: number): string {
  const m = Math.floor(ms / 60_000);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  return h < 48 ? `${h}h${m % 60}m` : `${Math.floor(h / 24)}d`;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Runs `fn` over `items` with at most `limit` at once; rejects with the first failure. */
async function forEachConcurrently<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
