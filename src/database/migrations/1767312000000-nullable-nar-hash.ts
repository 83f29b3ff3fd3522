import { TableColumn, type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * A NAR fetched by name before any narinfo named it has no NarHash/NarSize yet. The first schema
 * stored `''` and `0` for them; from here on they are NULL, which says "unknown" plainly.
 */
export class NullableNarHash1767312000000 implements MigrationInterface {
  name = 'NullableNarHash1767312000000';

  async up(q: QueryRunner): Promise<void> {
    await q.changeColumn('nar_files', 'nar_hash', narHash(true));
    await q.changeColumn('nar_files', 'nar_size', narSize(true));
    await q.query(`UPDATE nar_files SET nar_hash = NULL, nar_size = NULL WHERE nar_hash = ''`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`UPDATE nar_files SET nar_hash = '', nar_size = 0 WHERE nar_hash IS NULL`);
    await q.changeColumn('nar_files', 'nar_hash', narHash(false));
    await q.changeColumn('nar_files', 'nar_size', narSize(false));
  }
}

function narHash(isNullable: boolean): TableColumn {
  return new TableColumn({ name: 'nar_hash', type: 'varchar', length: '100', isNullable });
}

function narSize(isNullable: boolean): TableColumn {
  return new TableColumn({ name: 'nar_size', type: 'bigint', isNullable });
}
