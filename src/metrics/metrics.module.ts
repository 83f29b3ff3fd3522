import { Module, type DynamicModule } from '@nestjs/common';
import type { AppConfig } from '../config/app-config';
import { HttpMetrics } from './http-metrics';
import { MetricsController } from './metrics.controller';
import { MetricsService } from './metrics.service';
import { RecentFailures } from './recent-failures';

/**
 * MetricsService and RecentFailures for every flow (global: the flows report to them whether or not
 * metrics are served); with --prometheus-enabled also `GET /metrics` and the per-route HTTP counters.
 */
@Module({})
export class MetricsModule {
  static forRoot(config: AppConfig['metrics']): DynamicModule {
    return {
      module: MetricsModule,
      global: true,
      controllers: config.enabled ? [MetricsController] : [],
      providers: [MetricsService, RecentFailures, ...(config.enabled ? [HttpMetrics] : [])],
      exports: [MetricsService, RecentFailures],
    };
  }
}
