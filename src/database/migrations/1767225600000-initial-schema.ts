import {
  Table,
  TableForeignKey,
  TableIndex,
  type MigrationInterface,
  type QueryRunner,
} from 'typeorm';

/**
 * The first schema, written with TypeORM's schema builder so that one migration produces the same
 * tables on every dialect. Times are epoch milliseconds (bigint) to stay free of time zones.
 */
export class InitialSchema1767225600000 implements MigrationInterface {
  name = 'InitialSchema1767225600000';

  async up(q: QueryRunner): Promise<void> {
    const hashCol = (name: string) => ({ name, type: 'varchar', length: '100', isNullable: false });
    await q.createTable(
      new Table({
        name: 'nar_files',
        columns: [
          { name: 'key', type: 'varchar', length: '128', isPrimary: true },
          { name: 'upstream_url', type: 'text' },
          { name: 'compression', type: 'varchar', length: '16' },
          { ...hashCol('file_hash'), isNullable: true },
          { name: 'file_size', type: 'bigint', isNullable: true },
          hashCol('nar_hash'),
          { name: 'nar_size', type: 'bigint' },
          { name: 'stored_size', type: 'bigint', isNullable: true },
          { name: 'created_at', type: 'bigint' },
          { name: 'last_accessed_at', type: 'bigint' },
        ],
        indices: [
          new TableIndex({ name: 'idx_nar_files_stored_size', columnNames: ['stored_size'] }),
          new TableIndex({
            name: 'idx_nar_files_last_accessed_at',
            columnNames: ['last_accessed_at'],
          }),
        ],
      }),
    );
    await q.createTable(
      new Table({
        name: 'narinfos',
        columns: [
          { name: 'hash', type: 'varchar', length: '32', isPrimary: true },
          { name: 'store_path', type: 'text' },
          { name: 'nar_key', type: 'varchar', length: '128' },
          { name: 'compression', type: 'varchar', length: '16' },
          { ...hashCol('file_hash'), isNullable: true },
          { name: 'file_size', type: 'bigint', isNullable: true },
          hashCol('nar_hash'),
          { name: 'nar_size', type: 'bigint' },
          { name: 'deriver', type: 'text', isNullable: true },
          { name: 'system', type: 'varchar', length: '64', isNullable: true },
          { name: 'ca', type: 'text', isNullable: true },
          { name: 'upstream_url', type: 'text' },
          { name: 'own_signature', type: 'text', isNullable: true },
          { name: 'created_at', type: 'bigint' },
          { name: 'last_accessed_at', type: 'bigint' },
        ],
        indices: [
          new TableIndex({ name: 'idx_narinfos_nar_key', columnNames: ['nar_key'] }),
          new TableIndex({
            name: 'idx_narinfos_last_accessed_at',
            columnNames: ['last_accessed_at'],
          }),
        ],
      }),
    );
    for (const [table, valueColumn] of [
      ['narinfo_references', 'reference'],
      ['narinfo_signatures', 'signature'],
    ] as const) {
      await q.createTable(
        new Table({
          name: table,
          columns: [
            { name: 'narinfo_hash', type: 'varchar', length: '32', isPrimary: true },
            { name: 'position', type: 'int', isPrimary: true },
            { name: valueColumn, type: 'text' },
          ],
          foreignKeys: [
            new TableForeignKey({
              name: `fk_${table}_narinfo`,
              columnNames: ['narinfo_hash'],
              referencedTableName: 'narinfos',
              referencedColumnNames: ['hash'],
              onDelete: 'CASCADE',
            }),
          ],
        }),
      );
    }
  }

  async down(q: QueryRunner): Promise<void> {
    await q.dropTable('narinfo_signatures');
    await q.dropTable('narinfo_references');
    await q.dropTable('narinfos');
    await q.dropTable('nar_files');
  }
}
