import { NarFileRepository } from '../database/nar-file.repository';
import { NarInfoRepository } from '../database/narinfo.repository';
import type { NarStore } from '../storage/nar-store';
import type {
  FsckDeps,
  FsckEvent,
  FsckOptions,
  FsckSummary,
  ProblemAction,
  ProblemKind,
} from './fsck-types';
import { inspectorFor, type ObjectInfo, type ObjectInspector } from './object-info';

/** Rows (or objects) read per page. */
export const PAGE = 500;

/** What every fsck phase shares: the database, the store, the options and the running summary. */
export class FsckContext {
  readonly store: NarStore;
  readonly files: NarFileRepository;
  readonly narInfos: NarInfoRepository;
  readonly inspect: ObjectInspector;
  readonly options: FsckOptions;
  readonly emit: (event: FsckEvent) => void;
  readonly now: () => number;
  readonly concurrency: number;

  constructor(
    deps: FsckDeps,
    readonly summary: FsckSummary,
  ) {
    this.store = deps.store;
    this.files = new NarFileRepository(deps.ds);
    this.narInfos = new NarInfoRepository(deps.ds);
    this.inspect = deps.inspect ?? inspectorFor(deps.store);
    this.options = deps.options;
    this.emit = deps.report ?? (() => undefined);
    this.now = deps.options.now ?? Date.now;
    this.concurrency = deps.options.concurrency ?? (deps.options.verifyContent ? 4 : 16);
  }

  /** True when problems are to be fixed for real. */
  get repairing(): boolean {
    return this.options.repair && !this.options.dryRun;
  }

  /** One object's trouble (a failed stat, read or query) is reported; it does not stop the run. */
  async guarded(key: string, check: () => Promise<void>): Promise<void> {
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
  async problem(
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
}

/** Same object version: by version when the store gives one, else by size. */
export function sameObject(a: ObjectInfo, b: ObjectInfo | null): boolean {
  if (b === null) return false;
  if (a.version !== undefined || b.version !== undefined) return a.version === b.version;
  return a.size === b.size;
}

export function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Runs `fn` over `items` with at most `limit` at once; rejects with the first failure. */
export async function forEachConcurrently<T>(
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
