import type { DataSource } from 'typeorm';
import type { NarStore } from '../storage/nar-store';
import type { ObjectInspector } from './object-info';

/** What fsck is given, what it reports and what it sums up: shared by its phases and its command. */

export type ProblemKind =
  | 'missing'
  | 'orphan'
  | 'size-mismatch'
  | 'hash-mismatch'
  | 'dangling-narinfo'
  | 'leftover-spool'
  | 'unreadable';

export const PROBLEM_KINDS: readonly ProblemKind[] = [
  'missing',
  'orphan',
  'size-mismatch',
  'hash-mismatch',
  'dangling-narinfo',
  'leftover-spool',
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

export type FsckPhase = 'stored' | 'objects' | 'narinfos' | 'spools';

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
  /** Spool files looked at (the download scratch files of this instance's storage settings). */
  spools: number;
  found: Record<ProblemKind, number>;
  repaired: Record<ProblemKind, number>;
  /** With --repair --dry-run: what --repair would fix. */
  wouldRepair: Record<ProblemKind, number>;
  /** Problems found and not repaired (all of them without --repair, or with --dry-run). */
  remaining: number;
}
