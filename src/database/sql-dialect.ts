import type { DataSource } from 'typeorm';
import { sqliteStatementsOf, type SqliteStatements } from './sqlite-statements';

/**
 * What differs between the three databases in the hand-written statements of the request path:
 * bound parameters (`$1` on PostgreSQL, `?` elsewhere), identifier quoting, and the two upserts.
 *
 * The request path's lookups and writes are plain SQL built once per repository and run through
 * `query` (on SQLite straight on better-sqlite3, prepared once: see SqliteStatements; pg and mysql2
 * get a fixed text through `DataSource.query`). TypeORM's
 * query builder costs 5–10× more per statement (a stored narinfo read 350–750 µs against 40–65 µs
 * on SQLite), and a cold `nix copy` spent half of its main thread there.
 */
export class SqlDialect {
  private readonly kind: 'postgres' | 'mysql' | 'sqlite';
  private readonly sqlite: SqliteStatements | undefined;

  constructor(private readonly ds: DataSource) {
    const type = ds.options.type;
    if (type === 'postgres') this.kind = 'postgres';
    else if (type === 'mysql' || type === 'mariadb') this.kind = 'mysql';
    else if (type === 'better-sqlite3') this.kind = 'sqlite';
    else throw new Error(`no SQL dialect for database type ${type}`);
    this.sqlite = sqliteStatementsOf(ds);
  }

  /**
   * Runs one statement: the rows of a SELECT (a write's result is not used). `DataSource.query`,
   * except on SQLite, where better-sqlite3 runs it at once (see SqliteStatements).
   */
  async query<T>(sql: string, params: readonly unknown[]): Promise<T> {
    if (!this.sqlite) return this.ds.query<T>(sql, params as unknown[]);
    return this.sqlite.query<T>(sql, params); // a failure rejects with its QueryFailedError
  }

  /** The quoted identifier. */
  q(name: string): string {
    return this.kind === 'mysql' ? `\`${name}\`` : `"${name}"`;
  }

  /** Placeholders for parameters `from`…`from + count - 1` (1-based), comma-separated. */
  params(from: number, count: number): string {
    const out: string[] = [];
    for (let i = 0; i < count; i++) out.push(this.kind === 'postgres' ? `$${from + i}` : '?');
    return out.join(', ');
  }

  /** `… WHERE col = <p>`: the placeholder of parameter `n` (1-based). */
  p(n: number): string {
    return this.kind === 'postgres' ? `$${n}` : '?';
  }

  /** `INSERT INTO table (columns) VALUES (…), …` for `rows` rows. */
  insert(table: string, columns: readonly string[], rows = 1): string {
    return `INSERT INTO ${this.q(table)} (${columns.map((c) => this.q(c)).join(', ')}) VALUES ${this.rows(columns.length, rows)}`;
  }

  /** An insert of one row that does nothing when a row with the same key exists. */
  insertIgnore(table: string, columns: readonly string[]): string {
    const values = this.rows(columns.length, 1);
    const cols = columns.map((c) => this.q(c)).join(', ');
    switch (this.kind) {
      case 'postgres':
        return `INSERT INTO ${this.q(table)} (${cols}) VALUES ${values} ON CONFLICT DO NOTHING`;
      case 'mysql':
        return `INSERT IGNORE INTO ${this.q(table)} (${cols}) VALUES ${values}`;
      case 'sqlite':
        return `INSERT OR IGNORE INTO ${this.q(table)} (${cols}) VALUES ${values}`;
    }
  }

  /** An insert of one row that, when `key` exists, replaces the `replaced` columns instead. */
  upsert(
    table: string,
    columns: readonly string[],
    key: string,
    replaced: readonly string[],
  ): string {
    const head = `${this.insert(table, columns)} `;
    if (this.kind === 'mysql') {
      return `${head}ON DUPLICATE KEY UPDATE ${replaced.map((c) => `${this.q(c)} = VALUES(${this.q(c)})`).join(', ')}`;
    }
    return `${head}ON CONFLICT (${this.q(key)}) DO UPDATE SET ${replaced.map((c) => `${this.q(c)} = EXCLUDED.${this.q(c)}`).join(', ')}`;
  }

  private rows(width: number, rows: number): string {
    const out: string[] = [];
    for (let r = 0; r < rows; r++) out.push(`(${this.params(r * width + 1, width)})`);
    return out.join(', ');
  }
}

/** A bigint column's value (a string on PostgreSQL and MySQL) as a number, null kept. */
export function num(v: unknown): number {
  return typeof v === 'number' ? v : Number(v);
}

export function numOrNull(v: unknown): number | null {
  return v === null || v === undefined ? null : num(v);
}
