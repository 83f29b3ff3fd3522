import { Controller, Get, Inject } from '@nestjs/common';
import {
  HealthCheck,
  HealthCheckService,
  HealthIndicatorService,
  TypeOrmHealthIndicator,
} from '@nestjs/terminus';
import { LOCKER, type Locker } from '../locking/locker';
import { NAR_STORE, type NarStore } from '../storage/nar-store';

@Controller()
export class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly indicators: HealthIndicatorService,
    private readonly db: TypeOrmHealthIndicator,
    @Inject(NAR_STORE) private readonly store: NarStore,
    @Inject(LOCKER) private readonly locker: Locker,
  ) {}

  /** Liveness: the process serves requests. */
  @Get('healthz')
  @HealthCheck()
  live() {
    return this.health.check([]);
  }

  /**
   * Readiness: the database answers, storage can be written, and locks can be taken (a Redis outage
   * in degraded mode is reported but keeps the instance ready).
   */
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
      () => {
        const s = this.locker.status();
        const lock = this.indicators.check('lock');
        const data = {
          backend: s.backend,
          degraded: s.degraded,
          ...(s.detail ? { detail: s.detail } : {}),
        };
        return s.healthy ? lock.up(data) : lock.down(data);
      },
    ]);
  }
}
