import type { DataSource } from 'typeorm';
import { afterEach, beforeEach, expect, it } from 'vitest';
import {
  dataSourceOptions,
  migrateUnderLock,
  openDataSource,
  openDataSourceWith,
} from '../../src/database/data-source';
import { NarFileEntity } from '../../src/database/entities';
import { MIGRATIONS } from '../../src/database/migrations';
import { forEachDialect, type FreshDatabase } from './database-servers';

// Migrations run at start under a database-wide lock, so that instances starting together migrate
// once: every one of them opens, and each migration is recorded exactly once.

const TABLES = [
  'migrations',
  'nar_files',
  'narinfos',
  'narinfo_references',
  'narinfo_signatures',
  'access_tokens',
  'pins',
];
const MIGRATION_NAMES = MIGRATIONS.map((M) => new M().name);

async function expectMigrated(ds: DataSource): Promise<void> {
  const rows = await ds.query<Array<{ name: string }>>('SELECT name FROM migrations ORDER BY id');
  expect(rows.map((r) => r.name)).toEqual(MIGRATION_NAMES);
  const qr = ds.createQueryRunner();
  try {
    for (const table of TABLES) expect(await qr.hasTable(table), table).toBe(true);
  } finally {
    await qr.release();
  }
  expect(await migrateUnderLock(ds)).toEqual([]);
}

forEachDialect(['sqlite', 'postgres', 'mariadb'], (dialect, server) => {
  let db: FreshDatabase;
  beforeEach(async () => {
    db = await server().createDatabase();
  });
  afterEach(async () => {
    await db?.drop();
  });

  it("turns the first schema's ''/0 placeholders for an unknown NarHash/NarSize into NULL", async () => {
    const first = await openDataSourceWith({
      ...dataSourceOptions(db.config),
      migrations: MIGRATIONS.slice(0, 1),
    });
    try {
      // Plain SQL: the entity describes the new schema, not this one. `key` is reserved in MySQL.
      const q = (name: string) => first.driver.escape(name);
      const columns = ['key', 'upstream_url', 'compression', 'nar_hash', 'nar_size']
        .concat(['stored_size', 'created_at', 'last_accessed_at'])
        .map(q)
        .join(', ');
      for (const [key, narHash, narSize] of [
        ['by-name.nar.xz', '', 0],
        ['known.nar.xz', `sha256:${'1'.repeat(52)}`, 99],
      ] as const) {
        await first.query(
          `INSERT INTO ${q('nar_files')} (${columns}) VALUES ` +
            `('${key}', 'https://up.example/nar/${key}', 'xz', '${narHash}', ${narSize}, 10, 1, 1)`,
        );
      }
    } finally {
      await first.destroy();
    }
    const ds = await openDataSource(db.config);
    try {
      await expectMigrated(ds);
      const files = ds.getRepository(NarFileEntity);
      expect(await files.findOneBy({ key: 'by-name.nar.xz' })).toMatchObject({
        narHash: null,
        narSize: null,
      });
      expect(await files.findOneBy({ key: 'known.nar.xz' })).toMatchObject({
        narHash: `sha256:${'1'.repeat(52)}`,
        narSize: 99,
      });
    } finally {
      await ds.destroy();
    }
  });

  if (dialect === 'sqlite') {
    // One instance per SQLite file: opening again must find the schema and migrate nothing.
    it('two sequential opens migrate once', async () => {
      for (let i = 0; i < 2; i++) {
        const ds = await openDataSource(db.config);
        try {
          await expectMigrated(ds);
        } finally {
          await ds.destroy();
        }
      }
    });
    return;
  }

  it('4 instances starting at once all open, and migrate once', async () => {
    const opened = await Promise.allSettled(
      Array.from({ length: 4 }, () => openDataSource(db.config)),
    );
    const sources = opened.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    try {
      expect(opened.flatMap((r) => (r.status === 'rejected' ? [String(r.reason)] : []))).toEqual(
        [],
      );
      for (const ds of sources) await expectMigrated(ds);
    } finally {
      await Promise.all(sources.map((ds) => ds.destroy()));
    }
  });
});
