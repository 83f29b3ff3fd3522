import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DataSource, type DataSourceOptions } from 'typeorm';
import type { DatabaseConfig } from '../config/app-config';
import { ENTITIES } from './entities';
import { MIGRATIONS } from './migrations';

const common = {
  entities: ENTITIES,
  migrations: MIGRATIONS,
  migrationsTransactionMode: 'each',
  synchronize: false,
  migrationsRun: false,
} as const;

export function dataSourceOptions(db: DatabaseConfig): DataSourceOptions {
  switch (db.kind) {
    case 'sqlite':
      mkdirSync(dirname(db.path), { recursive: true });
      return {
        ...common,
        type: 'better-sqlite3',
        database: db.path,
        enableWAL: true,
        prepareDatabase: (conn: { pragma(sql: string): unknown }) => {
          conn.pragma('busy_timeout = 10000');
          conn.pragma('synchronous = NORMAL');
        },
      };
    case 'postgres':
      return {
        ...common,
        type: 'postgres',
        url: db.url,
        poolSize: db.poolMax,
        connectTimeoutMS: 10_000,
      };
    case 'mysql':
      return {
        ...common,
        type: 'mysql',
        url: db.url,
        poolSize: db.poolMax,
        connectTimeout: 10_000,
        supportBigNumbers: true,
        bigNumberStrings: true,
        charset: 'utf8mb4_bin',
      };
    default: {
      const unknown: never = db;
      throw new Error(`unknown database kind ${JSON.stringify(unknown)}`);
    }
  }
}

const MIGRATION_LOCK_NAME = 'narwhal_migrations';
/** pg_advisory_lock key: any fixed 64-bit number; this one spells "narwhal". */
const PG_MIGRATION_LOCK_KEY = '7957688855526926444';

/**
 * Runs pending migrations while holding a database-wide lock (PostgreSQL advisory lock, MySQL
 * GET_LOCK), so that several instances starting together migrate once. Returns the names applied.
 */
export async function migrateUnderLock(ds: DataSource): Promise<string[]> {
  const qr = ds.createQueryRunner();
  await qr.connect();
  const type = ds.options.type;
  try {
    if (type === 'postgres') await qr.query('SELECT pg_advisory_lock($1)', [PG_MIGRATION_LOCK_KEY]);
    if (type === 'mysql') {
      const rows = (await qr.query('SELECT GET_LOCK(?, 300) AS got', [
        MIGRATION_LOCK_NAME,
      ])) as Array<{ got: number }>;
      if (Number(rows[0]?.got) !== 1) throw new Error('timed out waiting for the migration lock');
    }
    const applied = await ds.runMigrations({ transaction: 'each' });
    return applied.map((m) => m.name);
  } finally {
    if (type === 'postgres')
      await qr
        .query('SELECT pg_advisory_unlock($1)', [PG_MIGRATION_LOCK_KEY])
        .catch(() => undefined);
    if (type === 'mysql')
      await qr.query('SELECT RELEASE_LOCK(?)', [MIGRATION_LOCK_NAME]).catch(() => undefined);
    await qr.release();
  }
}

/** Opens the database and brings its schema up to date. */
export function openDataSource(db: DatabaseConfig): Promise<DataSource> {
  return openDataSourceWith(dataSourceOptions(db));
}

export async function openDataSourceWith(options: DataSourceOptions): Promise<DataSource> {
  const ds = new DataSource(options);
  await ds.initialize();
  try {
    await migrateUnderLock(ds);
  } catch (e) {
    await ds.destroy();
    throw e;
  }
  return ds;
}
