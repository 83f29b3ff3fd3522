import { Global, Module } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { AccessTokenRepository } from './access-token.repository';
import { DatabaseHealth } from './database-health';
import { dataSourceOptions, openDataSourceWith } from './data-source';
import { NarFileRepository } from './nar-file.repository';
import { NarInfoRepository } from './narinfo.repository';
import { PinRepository } from './pin.repository';

/** The database: connection, migrations at start (under a cross-instance lock), and the repositories. */
@Global()
@Module({
  imports: [
    TypeOrmModule.forRootAsync({
      inject: [APP_CONFIG],
      useFactory: (config: AppConfig) => dataSourceOptions(config.database),
      // Our own factory: open, then migrate under the lock (TypeORM's migrationsRun takes no lock).
      dataSourceFactory: async (options) => {
        if (!options) throw new Error('no database options');
        return openDataSourceWith(options);
      },
    }),
  ],
  providers: [
    NarInfoRepository,
    NarFileRepository,
    AccessTokenRepository,
    PinRepository,
    DatabaseHealth,
  ],
  exports: [
    NarInfoRepository,
    NarFileRepository,
    AccessTokenRepository,
    PinRepository,
    DatabaseHealth,
  ],
})
export class DatabaseModule {}
