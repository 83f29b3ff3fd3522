import { Module, type DynamicModule } from '@nestjs/common';
import type { AppConfig } from '../config/app-config';
import { AccessGuard } from './access.guard';
import { ReadTokenHook } from './read-token.hook';
import { TokenService } from './token.service';

/**
 * Tokens and what asks for them (global: the upload, delete and pin controllers use AccessGuard
 * themselves). Reads (and /metrics) are checked by ReadTokenHook, registered only when
 * --cache-require-read-token (or --prometheus-require-token) asks for it: otherwise reads cost
 * nothing extra.
 */
@Module({})
export class AuthModule {
  static forRoot(config: AppConfig): DynamicModule {
    const reads =
      config.access.requireReadToken ||
      (config.metrics.enabled && config.access.metricsRequireToken);
    return {
      module: AuthModule,
      global: true,
      providers: [TokenService, AccessGuard, ...(reads ? [ReadTokenHook] : [])],
      exports: [TokenService, AccessGuard],
    };
  }
}
