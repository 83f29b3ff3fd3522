import { setTimeout as sleep } from 'node:timers/promises';
import { QueryFailedError, type DataSource, type EntityManager } from 'typeorm';
import { sqliteStatementsOf } from './sqlite-statements';

/**
 * Errors that mean "a concurrent transaction got in the way; running again will work":
 * PostgreSQL SQLSTATEs serialization_failure / deadlock_detected, MySQL/MariaDB deadlock and
 * lock-wait timeout.
 */
const RETRYABLE_CODES = new Set(['40001', '40P01', 'ER_LOCK_DEADLOCK', 'ER_LOCK_WAIT_TIMEOUT']);
const MAX_ATTEMPTS = 5;

function isRetryable(e: unknown): boolean {
  if (!(e instanceof QueryFailedError)) return false;
  const code = (e.driverError as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && RETRYABLE_CODES.has(code);
}

/** better-sqlite3 has one connection: transactions on it must take turns, or they nest and interleave. */
const sqliteTurns = new WeakMap<DataSource, Promise<unknown>>();

/**
 * Runs `work` in a transaction that copes with other transactions running at the same time, in this
 * process (SQLite's single connection) or in other narwhal instances (deadlocks are retried).
 * `work` may run more than once, so it must only write through `m`.
 */
export async function inTransaction<T>(
  ds: DataSource,
  work: (m: EntityManager) => Promise<T>,
): Promise<T> {
  switch (ds.options.type) {
    case 'better-sqlite3': {
      const turn = (sqliteTurns.get(ds) ?? Promise.resolve())
        .catch(() => undefined)
        .then(() => ds.transaction(work));
      sqliteTurns.set(ds, turn);
      return turn;
    }
    case 'mysql':
      // READ COMMITTED: no gap locks on the (often empty) ranges deleted before inserting, which
      // under REPEATABLE READ make two saves of different hashes deadlock.
      return retrying(() => ds.transaction('READ COMMITTED', work));
    default:
      return retrying(() => ds.transaction(work));
  }
}

/** A statement and its parameters. */
export type Statement = readonly [sql: string, params: readonly unknown[]];

/**
 * Runs `steps` in order in one transaction (see inTransaction). On SQLite they run at once on
 * better-sqlite3 (see SqliteStatements), in their turn after the transactions before them.
 */
export async function runInTransaction(ds: DataSource, steps: readonly Statement[]): Promise<void> {
  const sqlite = sqliteStatementsOf(ds);
  if (!sqlite) {
    await inTransaction(ds, async (m) => {
      for (const [sql, params] of steps) await m.query(sql, params as unknown[]);
    });
    return;
  }
  const turn = (sqliteTurns.get(ds) ?? Promise.resolve())
    .catch(() => undefined)
    .then(() => sqlite.transaction(steps));
  sqliteTurns.set(ds, turn);
  await turn;
}

async function retrying<T>(run: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await run();
    } catch (e) {
      if (attempt >= MAX_ATTEMPTS || !isRetryable(e)) throw e;
      await sleep(Math.random() * 20 * attempt);
    }
  }
}
