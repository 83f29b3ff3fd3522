import type { DataSource } from 'typeorm';
import { openDataSource } from '../../src/database/data-source';
import { forEachDialect } from './database-servers';
import { repositoryContract, type DatabaseUnderTest } from './repository.contract';

// The same contract, unchanged, against every database narwhal supports: each test gets a fresh
// database (a temp file, or a new `narwhal_test_<random>` database on the server) opened and
// migrated by openDataSource, exactly as narwhal opens its own.

forEachDialect(['sqlite', 'postgres', 'mariadb'], (dialect, server) => {
  repositoryContract(dialect, async (): Promise<DatabaseUnderTest> => {
    const fresh = await server().createDatabase();
    let ds: DataSource;
    try {
      ds = await openDataSource(fresh.config);
    } catch (e) {
      await fresh.drop();
      throw e;
    }
    const db: DatabaseUnderTest = {
      ds,
      async reopen() {
        await ds.destroy();
        ds = await openDataSource(fresh.config);
        db.ds = ds;
        return ds;
      },
      async cleanup() {
        if (ds.isInitialized) await ds.destroy();
        await fresh.drop();
      },
    };
    return db;
  });
});
