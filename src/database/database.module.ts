import { Global, Module } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { dataSourceOptions } from './data-source';
import { NarFileRepository } from './nar-file.repository';
import { NarInfoRepository } from './narinfo.repository';

/** The database: connection, migrations at start, and the repositories the flows use. */
@Global()
@Module({
  imports: [
    TypeOrmModule.forRootAsync({
      inject: [APP_CONFIG],
      useFactory: (config: AppConfig) => ({
        ...dataSourceOptions(config.database),
        migrationsRun: true,
      }),
    }),
  ],
  providers: [NarInfoRepository, NarFileRepository],
  exports: [NarInfoRepository, NarFileRepository],
})
export class DatabaseModule {}
