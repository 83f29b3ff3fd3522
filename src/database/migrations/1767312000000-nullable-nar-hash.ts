import { TableColumn, type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * A NAR fetched by name before any narinfo named it has no NarHash/NarSize yet. The first schema
 * stored `''` and `0` for them; from here on they are NULL, which says "unknown" plainly.
 *
 * Plain ALTERs on PostgreSQL and MySQL: TypeORM's changeColumn drops and re-adds a varchar column
 * there (losing its values) when only its nullability changes. SQLite cannot alter a column, and
 * changeColumn there copies the table, values included.
 */
export class NullableNarHash1767312000000 implements MigrationInterface {
  name = 'NullableNarHash1767312000000';

  async up(q: QueryRunner): Promise<void> {
    await setNullable(q, true);
    await q.query(`UPDATE nar_files SET nar_hash = NULL, nar_size = NULL WHERE nar_hash = ''`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`UPDATE nar_files SET nar_hash = '', nar_size = 0 WHERE nar_hash IS NULL`);
    await setNullable(q, false);
  }
}

async function setNullable(q: QueryRunner, isNullable: boolean): Promise<void> {
  switch (q.connection.options.type) {
    case 'postgres': {
      const change = isNullable ? 'DROP NOT NULL' : 'SET NOT NULL';
      await q.query(
        `ALTER TABLE nar_files ALTER COLUMN nar_hash ${change}, ALTER COLUMN nar_size ${change}`,
      );
      return;
    }
    case 'mysql':
    case 'mariadb': {
      const nullability = isNullable ? 'NULL' : 'NOT NULL';
      await q.query(
        `ALTER TABLE nar_files MODIFY nar_hash varchar(100) ${nullability}, ` +
          `MODIFY nar_size bigint ${nullability}`,
      );
      return;
    }
    default:
      await q.changeColumn(
        'nar_files',
        'nar_hash',
        new TableColumn({ name: 'nar_hash', type: 'varchar', length: '100', isNullable }),
      );
      await q.changeColumn(
        'nar_files',
        'nar_size',
        new TableColumn({ name: 'nar_size', type: 'bigint', isNullable }),
      );
  }
}
