import { checkNarInfos } from './check-narinfos';
import { checkObjects } from './check-objects';
import { checkSpools } from './check-spools';
import { checkStoredNars } from './check-stored';
import { FsckContext } from './context';
import { PROBLEM_KINDS, type FsckDeps, type FsckSummary, type ProblemKind } from './fsck-types';

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
 * | leftover-spool   | a download's spool file unchanged for longer than the grace | delete the file                 |
 * | unreadable       | could not be checked (I/O, network or query error)         | none: reported, counts as left  |
 *
 * Safe while narwhal serves: it reads in key-ordered pages (no long transaction, bounded memory), looks
 * again at the row and the object right before it reports or changes anything, and never deletes an
 * object that changed since it was checked (see ObjectInfo.version). Losing a race with narwhal costs
 * at most one re-download: a row marked stored whose object is gone is re-fetched on its next request.
 */

export * from './fsck-types';

/** Thrown before any change when storage and database look like they belong to different caches. */
export class FsckRefusedError extends Error {
  override name = 'FsckRefusedError';
}

/** Sanity check before repairing: this many sampled, every one bad → refuse. */
const SANITY_SAMPLE = 50;
const SANITY_MIN = 20;

/** Runs the sanity check, then the three phases: 'stored' rows, 'objects' in storage, 'narinfos'. */
export async function fsck(deps: FsckDeps): Promise<FsckSummary> {
  const ctx = new FsckContext(deps, emptySummary());
  await sanityCheck(ctx);
  await checkStoredNars(ctx);
  await checkObjects(ctx);
  await checkNarInfos(ctx);
  await checkSpools(ctx);
  const s = ctx.summary;
  s.remaining = PROBLEM_KINDS.reduce((n, k) => n + s.found[k] - s.repaired[k], 0);
  return s;
}

// ---- sanity: wrong storage settings must not turn into mass repairs -------------------------------

/**
 * A mistyped storage path or prefix makes every stored NAR look missing; a database of another cache
 * makes every object look orphaned. Repairing either would throw the cache away, so when every one of
 * a sample is bad, refuse to repair (and warn when only checking).
 */
async function sanityCheck(ctx: FsckContext): Promise<void> {
  const rows = await ctx.files.storedPage('', SANITY_SAMPLE);
  let missing = 0;
  for (const row of rows) if ((await ctx.inspect(row.key).catch(() => null)) === null) missing++;
  if (rows.length >= SANITY_MIN && missing === rows.length) {
    refuseOrWarn(
      ctx,
      `all ${missing} sampled NARs the database records as stored are missing from storage — ` +
        'do the storage settings point at this cache? (narwhal re-fetches a missing NAR by itself ' +
        'when it is requested)',
    );
  }

  const sample: string[] = [];
  for await (const o of ctx.store.list()) {
    sample.push(o.key);
    if (sample.length >= SANITY_SAMPLE) break;
  }
  const stored = await ctx.files.storedAmong(sample);
  if (sample.length >= SANITY_MIN && stored.size === 0) {
    refuseOrWarn(
      ctx,
      `none of ${sample.length} sampled objects in storage is recorded as stored in the database — ` +
        'does the database setting point at this cache? (to empty the store, delete it yourself)',
    );
  }
}

function refuseOrWarn(ctx: FsckContext, message: string): void {
  if (ctx.repairing) throw new FsckRefusedError(`refusing to repair: ${message}`);
  ctx.emit({ type: 'warning', message });
}

function emptySummary(): FsckSummary {
  return {
    storedNars: 0,
    contentVerified: 0,
    contentUnverifiable: 0,
    objects: 0,
    youngObjectsSkipped: 0,
    narInfos: 0,
    spools: 0,
    found: zeroCounts(),
    repaired: zeroCounts(),
    wouldRepair: zeroCounts(),
    remaining: 0,
  };
}

function zeroCounts(): Record<ProblemKind, number> {
  return Object.fromEntries(PROBLEM_KINDS.map((k) => [k, 0])) as Record<ProblemKind, number>;
}
