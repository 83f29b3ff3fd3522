import { QueryFailedError, type DataSource } from 'typeorm';

/** Statements kept prepared (TypeORM's own cache keeps 100). */
const MAX_PREPARED = 200;

/** better-sqlite3's connection, as TypeORM's driver holds it (the parts used here). */
interface RawConnection {
  prepare(sql: string): RawStatement;
  transaction<F extends (...args: never[]) => unknown>(fn: F): F;
}

interface RawStatement {
  /** Whether the statement returns rows (a SELECT, or a write with RETURNING). */
  readonly reader: boolean;
  all(...params: unknown[]): unknown[];
  run(...params: unknown[]): { changes: number };
}

/**
 * The request path's statements on SQLite, run on better-sqlite3's connection directly: prepared
 * once, executed at once. Through `DataSource.query` each one also paid for TypeORM's query runner
 * (an async call, a broadcaster, a result object, a turn of the microtask queue or two), which cost
 * about as much again as the statement itself.
 *
 * The connection is TypeORM's own (SQLite has one): the statements see and take part in whatever
 * it has open, exactly as a `DataSource.query` would. A failure is thrown as TypeORM's
 * QueryFailedError, as `DataSource.query` throws it, so that DatabaseHealth and the retries read it
 * the same.
 */
export class SqliteStatements {
  private connection: RawConnection | undefined;
  private readonly prepared = new Map<string, RawStatement>();

  constructor(private readonly ds: DataSource) {}

  /** The rows a reading statement returns, or, for a write, `[]` once it ran. */
  query<T>(sql: string, params: readonly unknown[]): T {
    try {
      const statement = this.statement(sql);
      return (statement.reader ? statement.all(...params) : (statement.run(...params), [])) as T;
    } catch (e) {
      throw new QueryFailedError(sql, params as unknown[], e as Error);
    }
  }

  /** Runs `steps` in one transaction, at once: rolled back if one fails. */
  transaction(steps: readonly (readonly [string, readonly unknown[]])[]): void {
    const connection = this.current();
    connection.transaction(() => {
      for (const [sql, params] of steps) this.query(sql, params);
    })();
  }

  private statement(sql: string): RawStatement {
    const connection = this.current();
    let statement = this.prepared.get(sql);
    if (!statement) {
      statement = connection.prepare(sql);
      // Lists of hashes make one text per length: the oldest go first past the bound.
      if (this.prepared.size >= MAX_PREPARED) {
        this.prepared.delete(this.prepared.keys().next().value as string);
      }
      this.prepared.set(sql, statement);
    }
    return statement;
  }

  /** TypeORM's connection now; statements prepared on an earlier one are dropped. */
  private current(): RawConnection {
    const connection = (this.ds.driver as { databaseConnection?: RawConnection })
      .databaseConnection;
    if (!connection) throw new Error('the SQLite database is not open');
    if (connection !== this.connection) {
      this.connection = connection;
      this.prepared.clear();
    }
    return connection;
  }
}

const byDataSource = new WeakMap<DataSource, SqliteStatements>();

/** The SqliteStatements of `ds` when it is SQLite (one per data source), else undefined. */
export function sqliteStatementsOf(ds: DataSource): SqliteStatements | undefined {
  if (ds.options.type !== 'better-sqlite3') return undefined;
  let statements = byDataSource.get(ds);
  if (!statements) byDataSource.set(ds, (statements = new SqliteStatements(ds)));
  return statements;
}
