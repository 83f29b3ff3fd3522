import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DataSource, QueryFailedError } from 'typeorm';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { isDatabaseOutage } from './outage';
import { SqlDialect } from './sql-dialect';
import { sqliteStatementsOf } from './sqlite-statements';
import { inTransaction, runInTransaction } from './transaction';

let dir: string;
let ds: DataSource;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'narwhal-sqlite-statements-'));
  ds = new DataSource({ type: 'better-sqlite3', database: join(dir, 'db.sqlite') });
  await ds.initialize();
  await ds.query('CREATE TABLE t (k TEXT PRIMARY KEY NOT NULL, v INTEGER NOT NULL)');
});

afterEach(async () => {
  if (ds.isInitialized) await ds.destroy();
  rmSync(dir, { recursive: true, force: true });
});

describe('SqliteStatements', () => {
  it('runs statements on the connection TypeORM holds: what one writes the other reads', async () => {
    const db = new SqlDialect(ds);
    expect(await db.query('INSERT INTO t (k, v) VALUES (?, ?)', ['a', 1])).toEqual([]);
    expect(await ds.query('SELECT k, v FROM t')).toEqual([{ k: 'a', v: 1 }]);
    await ds.query('INSERT INTO t (k, v) VALUES (?, ?)', ['b', 2]);
    expect(await db.query('SELECT k, v FROM t WHERE v > ? ORDER BY k', [0])).toEqual([
      { k: 'a', v: 1 },
      { k: 'b', v: 2 },
    ]);
    // One data source, one set of prepared statements, whoever asks.
    expect(sqliteStatementsOf(ds)).toBe(sqliteStatementsOf(ds));
  });

  it('throws a failure as TypeORM would: a QueryFailedError with the driver error', async () => {
    const db = new SqlDialect(ds);
    await db.query('INSERT INTO t (k, v) VALUES (?, ?)', ['a', 1]);
    const failed = await db
      .query('INSERT INTO t (k, v) VALUES (?, ?)', ['a', 2])
      .catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(QueryFailedError);
    expect((failed as QueryFailedError).driverError).toMatchObject({
      code: 'SQLITE_CONSTRAINT_PRIMARYKEY',
    });
    expect(isDatabaseOutage(failed)).toBe(false);
    await expect(db.query('SELECT nope FROM t', [])).rejects.toBeInstanceOf(QueryFailedError);
  });

  it('runs a transaction whole or not at all', async () => {
    await runInTransaction(ds, [
      ['INSERT INTO t (k, v) VALUES (?, ?)', ['a', 1]],
      ['INSERT INTO t (k, v) VALUES (?, ?)', ['b', 2]],
    ]);
    await expect(
      runInTransaction(ds, [
        ['UPDATE t SET v = ? WHERE k = ?', [10, 'a']],
        ['INSERT INTO t (k, v) VALUES (?, ?)', ['b', 3]], // the key exists: all of it rolls back
      ]),
    ).rejects.toBeInstanceOf(QueryFailedError);
    expect(await ds.query('SELECT k, v FROM t ORDER BY k')).toEqual([
      { k: 'a', v: 1 },
      { k: 'b', v: 2 },
    ]);
    // The connection is usable after the rollback, in and out of transactions.
    await runInTransaction(ds, [['UPDATE t SET v = ? WHERE k = ?', [5, 'b']]]);
    expect(await new SqlDialect(ds).query('SELECT v FROM t WHERE k = ?', ['b'])).toEqual([
      { v: 5 },
    ]);
  });

  it('waits for a transaction still open on the connection: never runs inside it', async () => {
    let fail!: () => void;
    const open = inTransaction(ds, async (m) => {
      await m.query('INSERT INTO t (k, v) VALUES (?, ?)', ['a', 1]);
      await new Promise<void>((resolve) => (fail = resolve));
      throw new Error('rolled back');
    });
    await vi.waitFor(() => expect(fail).toBeDefined());
    const after = runInTransaction(ds, [['INSERT INTO t (k, v) VALUES (?, ?)', ['b', 2]]]);
    await new Promise((r) => setTimeout(r, 20));
    fail();
    await expect(open).rejects.toThrow('rolled back');
    await after;
    // Run inside the first one, it would have been rolled back with it.
    expect(await ds.query('SELECT k FROM t')).toEqual([{ k: 'b' }]);
  });

  it('prepares again on a new connection (the data source closed and opened again)', async () => {
    const db = new SqlDialect(ds);
    await db.query('INSERT INTO t (k, v) VALUES (?, ?)', ['a', 1]);
    expect(await db.query('SELECT v FROM t', [])).toEqual([{ v: 1 }]); // prepared on this one
    await ds.destroy();
    await expect(db.query('SELECT v FROM t', [])).rejects.toThrow();
    await ds.initialize();
    expect(await db.query('SELECT v FROM t', [])).toEqual([{ v: 1 }]);
  });
});

describe('SqliteStatements bound', () => {
  it('keeps at most 200 statements prepared, dropping the oldest, and still runs every one', async () => {
    const sqlite = sqliteStatementsOf(ds)!;
    await ds.query('INSERT INTO t (k, v) VALUES (?, ?)', ['a', 1]);
    for (let n = 1; n <= 250; n++) {
      const list = Array.from({ length: n }, () => '?').join(', ');
      const keys = ['a', ...Array.from({ length: n - 1 }, (_, i) => `x${i}`)];
      expect(sqlite.query(`SELECT k FROM t WHERE k IN (${list})`, keys)).toEqual([{ k: 'a' }]);
    }
    expect((sqlite as unknown as { prepared: Map<string, unknown> }).prepared.size).toBe(200);
    expect(sqlite.query('SELECT k FROM t WHERE k IN (?)', ['a'])).toEqual([{ k: 'a' }]);
  });
});
