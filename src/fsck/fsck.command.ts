import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DataSource } from 'typeorm';
import { ConfigError, type AppConfig } from '../config/app-config';
import { parseDuration } from '../config/units';
import { dataSourceOptions } from '../database/data-source';
import { createNarStore } from '../storage/storage.module';
import {
  DEFAULT_ORPHAN_GRACE_MS,
  fsck,
  FsckRefusedError,
  PROBLEM_KINDS,
  type FsckEvent,
  type FsckOptions,
  type FsckPhase,
  type FsckProblem,
  type FsckSummary,
  type ProblemKind,
} from './fsck';
import { inspectorFor } from './object-info';

/** The fsck subcommand's own flags (commander's camelCase names). */
export interface FsckFlags {
  repair?: boolean;
  verifyContent?: boolean;
  dryRun?: boolean;
  orphanGrace?: string;
}

/**
 * `narwhal fsck`: opens the configured database (without migrating it) and storage, runs fsck and
 * prints what it finds. Resolves the exit code: 0 when no problem remains, 1 otherwise. Bad settings
 * throw ConfigError (exit 2 in main).
 */
export async function runFsckCommand(
  config: AppConfig,
  flags: FsckFlags,
  out: NodeJS.WritableStream & { isTTY?: boolean } = process.stdout,
): Promise<number> {
  const options: FsckOptions = {
    repair: flags.repair === true,
    dryRun: flags.dryRun === true,
    verifyContent: flags.verifyContent === true,
    orphanGraceMs: parseGrace(flags.orphanGrace),
  };
  checkPathsExist(config);

  const ds = new DataSource(dataSourceOptions(config.database));
  await ds.initialize();
  let store: Awaited<ReturnType<typeof createNarStore>> | undefined;
  try {
    if (await ds.showMigrations()) {
      out.write('fsck: the database schema is not up to date; run `narwhal migrate` first\n');
      return 1;
    }
    store = await createNarStore(config);
    const printer = new Printer(out, options);
    printer.start();
    const summary = await fsck({
      ds,
      store,
      options,
      report: (e) => printer.event(e),
      inspect: inspectorFor(store, config.storage),
    }).catch((e: unknown) => {
      if (!(e instanceof FsckRefusedError)) throw e;
      printer.event({ type: 'warning', message: e.message });
      return null;
    });
    if (!summary) return 1;
    printer.summary(summary);
    return summary.remaining === 0 ? 0 : 1;
  } finally {
    await store?.close();
    await ds.destroy();
  }
}

function parseGrace(text: string | undefined): number {
  if (text === undefined) return DEFAULT_ORPHAN_GRACE_MS;
  try {
    return parseDuration(text);
  } catch (e) {
    throw new ConfigError('orphan-grace', (e as Error).message);
  }
}

/**
 * fsck must not create an empty database or store where it expected the real ones: a wrong path would
 * make every object an orphan or every stored NAR missing.
 */
function checkPathsExist(config: AppConfig): void {
  if (config.database.kind === 'sqlite' && !existsSync(config.database.path)) {
    throw new ConfigError('cache-database-url', `no database at ${config.database.path}`);
  }
  if (config.storage.kind === 'fs' && !existsSync(join(config.storage.path, 'nar'))) {
    throw new ConfigError(
      'cache-storage-local',
      `no NAR store at ${config.storage.path} (it has no nar/ directory)`,
    );
  }
}

const KIND_LABELS: Record<ProblemKind, string> = {
  missing: 'missing objects',
  orphan: 'orphan objects',
  'size-mismatch': 'size mismatches',
  'hash-mismatch': 'hash mismatches',
  'dangling-narinfo': 'dangling narinfos',
  'leftover-spool': 'leftover spool files',
  unreadable: 'unreadable',
};

const PHASE_LABELS: Record<FsckPhase, string> = {
  stored: 'stored NARs',
  objects: 'objects in storage',
  narinfos: 'narinfos',
  spools: 'spool files',
};

/** A `\r` progress counter on a terminal; plain lines (at most every 10 s) otherwise. */
class Printer {
  private readonly tty: boolean;
  private lastProgress = 0;
  private progressShown = false;

  constructor(
    private readonly out: NodeJS.WritableStream & { isTTY?: boolean },
    private readonly options: FsckOptions,
  ) {
    this.tty = out.isTTY === true;
  }

  start(): void {
    const o = this.options;
    const mode = !o.repair ? 'check only' : o.dryRun ? 'dry run: nothing is changed' : 'repairing';
    const content = o.verifyContent ? ', verifying content' : '';
    this.line(`fsck (${mode}${content})`);
  }

  event(e: FsckEvent): void {
    switch (e.type) {
      case 'phase':
        // Terminal: the counter shows from the first item. Plain lines: the first after 10 s.
        this.lastProgress = this.tty ? 0 : Date.now();
        if (!this.tty)
          this.line(
            `checking ${PHASE_LABELS[e.phase]}${e.total !== undefined ? ` (${e.total})` : ''}`,
          );
        break;
      case 'progress': {
        const now = Date.now();
        if (now - this.lastProgress < (this.tty ? 100 : 10_000)) return;
        this.lastProgress = now;
        const count = `${e.done}${e.total !== undefined ? `/${e.total}` : ''}`;
        if (this.tty) {
          this.out.write(`\r\x1b[K  ${PHASE_LABELS[e.phase]}: checked ${count}`);
          this.progressShown = true;
        } else {
          this.line(`  ${PHASE_LABELS[e.phase]}: checked ${count}`);
        }
        break;
      }
      case 'phase-done':
        this.line(`  ${PHASE_LABELS[e.phase]}: checked ${e.done}`);
        break;
      case 'problem':
        this.line(formatProblem(e.problem));
        break;
      case 'warning':
        this.line(`WARNING: ${e.message}`);
        break;
    }
  }

  summary(s: FsckSummary): void {
    const o = this.options;
    const lines = ['', 'summary:'];
    const content = o.verifyContent
      ? ` (${s.contentVerified} content-verified, ${s.contentUnverifiable} size only: no hash to check)`
      : '';
    lines.push(
      `  checked ${s.storedNars} stored NARs${content}, ${s.objects} objects, ${s.narInfos} narinfos`,
    );
    if (s.youngObjectsSkipped > 0) {
      lines.push(
        `  ${s.youngObjectsSkipped} objects without a stored row were left alone: changed less than ` +
          `${formatDuration(o.orphanGraceMs)} ago (perhaps a download being committed)`,
      );
    }
    const verb = !o.repair ? '' : o.dryRun ? 'would repair' : 'repaired';
    for (const kind of PROBLEM_KINDS) {
      const found = s.found[kind];
      if (kind === 'hash-mismatch' && !o.verifyContent) {
        lines.push(`  ${KIND_LABELS[kind].padEnd(18)} not checked (--verify-content)`);
        continue;
      }
      const fixed = o.dryRun ? s.wouldRepair[kind] : s.repaired[kind];
      const tail = verb && found > 0 && kind !== 'unreadable' ? `  ${verb} ${fixed}` : '';
      lines.push(`  ${KIND_LABELS[kind].padEnd(18)} ${String(found).padStart(6)}${tail}`);
    }
    const total = PROBLEM_KINDS.reduce((n, k) => n + s.found[k], 0);
    lines.push(
      total === 0
        ? 'no problems found'
        : s.remaining === 0
          ? `${total} problems found, all repaired`
          : `${total} problems found, ${s.remaining} remain${o.repair ? '' : ' (run with --repair to fix them)'}`,
    );
    for (const l of lines) this.line(l);
  }

  private line(text: string): void {
    if (this.progressShown) {
      this.out.write('\r\x1b[K');
      this.progressShown = false;
    }
    this.out.write(`${text}\n`);
  }
}

function formatProblem(p: FsckProblem): string {
  const action =
    p.action === 'none'
      ? ''
      : p.action === 'would-repair'
        ? ` — would ${REPAIR_TEXT[p.kind]}`
        : p.action === 'repaired'
          ? ` — ${REPAIRED_TEXT[p.kind]}`
          : p.action === 'resolved'
            ? ' — changed by narwhal meanwhile, left as it is'
            : ' — NOT repaired';
  return `${p.kind.padEnd(16)} ${p.key}: ${p.detail}${action}`;
}

const REPAIR_TEXT: Record<ProblemKind, string> = {
  missing: 'mark it not stored',
  orphan: 'delete the object',
  'size-mismatch': 'mark it not stored and delete the object',
  'hash-mismatch': 'mark it not stored and delete the object',
  'dangling-narinfo': 'delete the narinfo',
  'leftover-spool': 'delete the file',
  unreadable: 'leave it',
};

const REPAIRED_TEXT: Record<ProblemKind, string> = {
  missing: 'marked not stored',
  orphan: 'deleted',
  'size-mismatch': 'marked not stored, object deleted',
  'hash-mismatch': 'marked not stored, object deleted',
  'dangling-narinfo': 'deleted',
  'leftover-spool': 'deleted',
  unreadable: 'left',
};

function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}
