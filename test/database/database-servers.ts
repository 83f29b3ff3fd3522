import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createConnection } from 'mysql2/promise';
import { Client } from 'pg';
import { beforeAll, beforeEach, describe } from 'vitest';
import type { DatabaseConfig } from '../../src/config/app-config';

/**
 * Fresh, empty databases on the real servers the database suites run against: a temp SQLite file,
 * and `narwhal_test_<random>` databases created on PostgreSQL and MariaDB through a maintenance
 * connection and dropped again afterwards.
 *
 * The servers default to the ones CI provides (trust auth on 127.0.0.1); NARWHAL_TEST_POSTGRES_URL
 * and NARWHAL_TEST_MARIADB_URL point the suites elsewhere (any database path in them is ignored).
 */

export type Dialect = 'sqlite' | 'postgres' | 'mariadb';

export interface FreshDatabase {
  /** Settings as the config loader would produce them for this database. */
  config: DatabaseConfig;
  /** Removes the database. Close every DataSource on it first (PostgreSQL's are terminated anyway). */
  drop(): Promise<void>;
}

export interface DatabaseServer {
  dialect: Dialect;
  createDatabase(): Promise<FreshDatabase>;
}

const POOL_MAX = 10;
const DEFAULT_URLS = {
  postgres: 'postgres://postgres@127.0.0.1:5432/',
  mariadb: 'mysql://root@127.0.0.1:3306/',
};
const URL_ENV = { postgres: 'NARWHAL_TEST_POSTGRES_URL', mariadb: 'NARWHAL_TEST_MARIADB_URL' };
const PROBE_TIMEOUT_MS = 3_000;

function serverUrl(env: string | undefined, fallback: string): URL {
  const url = new URL(env ?? fallback);
  url.pathname = '/';
  return url;
}

function databaseUrl(server: URL, name: string): string {
  const url = new URL(server);
  url.pathname = `/${name}`;
  return url.toString();
}

/** pg reports a refused connection as an AggregateError with an empty message. */
function describeError(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const code = (e as { code?: string }).code;
  return [code, e.message].filter(Boolean).join(' ') || e.name;
}

function freshName(): string {
  return `narwhal_test_${randomBytes(6).toString('hex')}`;
}

const sqliteServer: DatabaseServer = {
  dialect: 'sqlite',
  async createDatabase() {
    const dir = await mkdtemp(join(tmpdir(), 'narwhal-db-'));
    return {
      config: { kind: 'sqlite', path: join(dir, 'narwhal.sqlite') },
      drop: () => rm(dir, { recursive: true, force: true }),
    };
  },
};

class PostgresServer implements DatabaseServer {
  readonly dialect = 'postgres';
  constructor(private readonly url: URL) {}

  private async admin<T>(run: (c: Client) => Promise<T>): Promise<T> {
    const client = new Client({
      connectionString: databaseUrl(this.url, 'postgres'),
      connectionTimeoutMillis: PROBE_TIMEOUT_MS,
    });
    await client.connect();
    try {
      return await run(client);
    } finally {
      await client.end();
    }
  }

  probe(): Promise<void> {
    return this.admin(async (c) => {
      await c.query('SELECT 1');
    });
  }

  async createDatabase(): Promise<FreshDatabase> {
    const name = freshName();
    await this.admin((c) => c.query(`CREATE DATABASE "${name}"`));
    return {
      config: { kind: 'postgres', url: databaseUrl(this.url, name), poolMax: POOL_MAX },
      drop: () =>
        this.admin(async (c) => {
          await c.query(
            'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
            [name],
          );
          await c.query(`DROP DATABASE IF EXISTS "${name}"`);
        }),
    };
  }
}

class MariaDbServer implements DatabaseServer {
  readonly dialect = 'mariadb';
  constructor(private readonly url: URL) {}

  private async admin<T>(
    run: (c: Awaited<ReturnType<typeof createConnection>>) => Promise<T>,
  ): Promise<T> {
    const conn = await createConnection({
      uri: this.url.toString(),
      connectTimeout: PROBE_TIMEOUT_MS,
    });
    try {
      return await run(conn);
    } finally {
      await conn.end();
    }
  }

  probe(): Promise<void> {
    return this.admin(async (c) => {
      await c.query('SELECT 1');
    });
  }

  async createDatabase(): Promise<FreshDatabase> {
    const name = freshName();
    // The server's default character set, as an operator's `CREATE DATABASE narwhal` would get.
    await this.admin((c) => c.query(`CREATE DATABASE \`${name}\``));
    return {
      config: { kind: 'mysql', url: databaseUrl(this.url, name), poolMax: POOL_MAX },
      drop: () =>
        this.admin(async (c) => {
          await c.query(`DROP DATABASE IF EXISTS \`${name}\``);
        }),
    };
  }
}

/**
 * The server for `dialect`, checked to be reachable. One that cannot be reached gives null after a
 * loud warning, so the suites still run on a laptop without it; on CI (`CI=true`) it is an error,
 * because the suites must not silently disappear there.
 */
export async function reachableServer(dialect: Dialect): Promise<DatabaseServer | null> {
  if (dialect === 'sqlite') return sqliteServer;
  const url = serverUrl(process.env[URL_ENV[dialect]], DEFAULT_URLS[dialect]);
  const server = dialect === 'postgres' ? new PostgresServer(url) : new MariaDbServer(url);
  try {
    await server.probe();
    return server;
  } catch (e) {
    const reason = describeError(e);
    if (process.env.CI === 'true') {
      throw new Error(
        `The database suites need ${dialect} (CI=true), which is unreachable: ${reason}`,
      );
    }
    console.warn(
      `\n*** SKIPPING the ${dialect} database suites: ${url.host} unreachable (${reason}).\n` +
        `*** Start ${dialect} there or set ${URL_ENV[dialect]}; on CI this is an error.\n`,
    );
    return null;
  }
}

/**
 * Declares a suite per dialect whose tests get `server()`: the reachable server, or are skipped.
 */
export function forEachDialect(
  dialects: readonly Dialect[],
  body: (dialect: Dialect, server: () => DatabaseServer) => void,
): void {
  for (const dialect of dialects) {
    describe(dialect, () => {
      let server: DatabaseServer | null = null;
      beforeAll(async () => {
        server = await reachableServer(dialect);
      });
      beforeEach((context) => {
        if (!server) context.skip();
      });
      body(dialect, () => {
        if (!server) throw new Error(`unreachable: every ${dialect} test is skipped without it`);
        return server;
      });
    });
  }
}
