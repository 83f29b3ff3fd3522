import { Controller, Get, Inject } from '@nestjs/common';
import {
  HealthCheck,
  HealthCheckService,
  HealthIndicatorService,
  TypeOrmHealthIndicator,
} from '@nestjs/terminus';
import { NAR_STORE, type NarStore } from '../storage/nar-store';

@Controller()
export class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly indicators: HealthIndicatorService,
    private readonly db: TypeOrmHealthIndicator,
    @Inject(NAR_STORE) private readonly store: NarStore,
  ) {}

  /** Liveness: the process serves requests. */
  @Get('healthz')
  @HealthCheck()
  live() {
    return this.health.check([]);
  }

  /** Readiness: the database answers and storage can be written. */
  @Get('readyz')
  @HealthCheck()
  ready() {
    return this.health.check([
      () => this.db.pingCheck('database').withTimeout(3000),
      () =>
        this.indicators
          .check('storage')
          .attempt(() => this.store.checkWritable())
          .withTimeout(3000),
    ]);
  }
}
