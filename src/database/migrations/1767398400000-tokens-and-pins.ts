import { Table, TableIndex, type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * Access tokens (only a hash of each) and pinned store paths: new tables, made with the schema
 * builder, the same on every dialect.
 */
export class TokensAndPins1767398400000 implements MigrationInterface {
  name = 'TokensAndPins1767398400000';

  async up(q: QueryRunner): Promise<void> {
    await q.createTable(
      new Table({
        name: 'access_tokens',
        columns: [
          { name: 'name', type: 'varchar', length: '64', isPrimary: true },
          { name: 'token_hash', type: 'varchar', length: '64' },
          { name: 'permissions', type: 'varchar', length: '64' },
          { name: 'created_at', type: 'bigint' },
          { name: 'expires_at', type: 'bigint', isNullable: true },
          { name: 'last_used_at', type: 'bigint', isNullable: true },
        ],
        indices: [
          new TableIndex({
            name: 'idx_access_tokens_token_hash',
            columnNames: ['token_hash'],
            isUnique: true,
          }),
        ],
      }),
    );
    await q.createTable(
      new Table({
        name: 'pins',
        columns: [
          { name: 'hash', type: 'varchar', length: '32', isPrimary: true },
          { name: 'store_path', type: 'text' },
          { name: 'created_at', type: 'bigint' },
          { name: 'created_by', type: 'varchar', length: '64' },
        ],
      }),
    );
  }

  async down(q: QueryRunner): Promise<void> {
    await q.dropTable('pins');
    await q.dropTable('access_tokens');
  }
}
