import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DataSource, type DataSourceOptions } from 'typeorm';
import type { DatabaseConfig } from '../config/app-config';
import { ENTITIES } from './entities';
import { MIGRATIONS } from './migrations';

export function dataSourceOptions(db: DatabaseConfig): DataSourceOptions {
  switch (db.kind) {
    case 'sqlite':
      mkdirSync(dirname(db.path), { recursive: true });
      return {
        type: 'better-sqlite3',
        database: db.path,
        entities: ENTITIES,
        migrations: MIGRATIONS,
        migrationsTransactionMode: 'each',
        synchronize: false,
        enableWAL: true,
        prepareDatabase: (conn: { pragma(sql: string): unknown }) => {
          conn.pragma('busy_timeout = 10000');
          conn.pragma('synchronous = NORMAL');
        },
      };
    default: {
      const unknown: never = db.kind;
      throw new Error(`unknown database kind ${String(unknown)}`);
    }
  }
}

/** Opens the database and brings its schema up to date. */
export async function openDataSource(db: DatabaseConfig): Promise<DataSource> {
  const ds = new DataSource(dataSourceOptions(db));
  await ds.initialize();
  await ds.runMigrations({ transaction: 'each' });
  return ds;
}
