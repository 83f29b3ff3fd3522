import { Module, type DynamicModule } from '@nestjs/common';
import { APP_FILTER } from '@nestjs/core';
import { ScheduleModule } from '@nestjs/schedule';
import { AuthModule } from './auth/auth.module';
import { CacheInfoModule } from './cache-info/cache-info.module';
import { HttpErrorFilter } from './common/http-error.filter';
import type { AppConfig } from './config/app-config';
import { ConfigModule } from './config/config.module';
import { DatabaseModule } from './database/database.module';
import { HealthModule } from './health/health.module';
import { InstancesModule } from './instances/instances.module';
import { LruModule } from './lru/lru.module';
import { MetricsModule } from './metrics/metrics.module';
import { NarModule } from './nar/nar.module';
import { NarInfoModule } from './narinfo/narinfo.module';
import { PinsModule } from './pins/pins.module';
import { PrefetchModule } from './prefetch/prefetch.module';
import { UploadsModule } from './uploads/uploads.module';

/** Wires narwhal's modules together; nothing else. */
@Module({})
export class AppModule {
  static forRoot(config: AppConfig): DynamicModule {
    return {
      module: AppModule,
      imports: [
        ConfigModule.forRoot(config),
        ScheduleModule.forRoot(),
        DatabaseModule,
        MetricsModule.forRoot(config.metrics),
        InstancesModule,
        AuthModule.forRoot(config),
        CacheInfoModule,
        NarInfoModule,
        NarModule,
        PrefetchModule,
        UploadsModule.forRoot(config.access),
        PinsModule,
        LruModule,
        HealthModule,
      ],
      providers: [{ provide: APP_FILTER, useClass: HttpErrorFilter }],
    };
  }
}
