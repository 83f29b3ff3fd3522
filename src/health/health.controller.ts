import { Controller, Get, Head, HttpException, Inject, Res } from '@nestjs/common';
import {
  HealthCheck,
  HealthCheckService,
  HealthIndicatorService,
  TypeOrmHealthIndicator,
  type HealthCheckResult,
} from '@nestjs/terminus';
import type { FastifyReply } from 'fastify';
import { Access } from '../common/access';
import { BOOT_HEADER, INSTANCE, type Instance } from '../instances/instance';
import { LOCKER, type Locker } from '../locking/locker';
import { DiskWatch } from '../storage/disk-watch';
import { NAR_STORE, type NarStore } from '../storage/nar-store';
import { UpstreamProbe } from '../upstream/upstream-probe';

/** Open to everyone: orchestrators and load balancers probe these without a token. */
@Controller()
@Access('public')
export class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly indicators: HealthIndicatorService,
    private readonly db: TypeOrmHealthIndicator,
    @Inject(NAR_STORE) private readonly store: NarStore,
    @Inject(LOCKER) private readonly locker: Locker,
    private readonly upstreams: UpstreamProbe,
    private readonly disk: DiskWatch,
    @Inject(INSTANCE) private readonly instance: Instance,
  ) {}

  /** Liveness: the process serves requests. */
  @Get('healthz')
  @HealthCheck()
  live(@Res() reply: FastifyReply): Promise<void> {
    return this.answer(reply, () => this.health.check([]));
  }

  @Head('healthz')
  liveHead(@Res() reply: FastifyReply): Promise<void> {
    return this.answer(reply, () => this.health.check([]), true);
  }

  /**
   * Readiness: the database answers, storage can be written, and locks can be taken (a Redis outage
   * in degraded mode is reported but keeps the instance ready). Upstream reachability is shown from
   * the background probe and never makes narwhal unready: clients fall back on a miss anyway, and
   * taking every instance out of a load balancer during an upstream outage would also stop hits.
   */
  @Get('readyz')
  @HealthCheck()
  ready(@Res() reply: FastifyReply): Promise<void> {
    return this.answer(reply, () => this.readiness());
  }

  @Head('readyz')
  readyHead(@Res() reply: FastifyReply): Promise<void> {
    return this.answer(reply, () => this.readiness(), true);
  }

  private readiness(): Promise<HealthCheckResult> {
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
      async () => {
        // Shown, never failing: hits are still served from a full disk.
        const { low, minFreeBytes, disks } = await this.disk.check();
        return this.indicators.check('disk').up({ low, minFreeBytes, disks });
      },
      () => this.indicators.check('upstream').up({ upstreams: this.upstreams.snapshot() }),
    ]);
  }

  /**
   * 200 with Terminus's JSON, or 503 with the same JSON (a failed check throws it as the exception's
   * response). HEAD gets the same status and headers without the body.
   */
  private async answer(
    reply: FastifyReply,
    check: () => Promise<HealthCheckResult>,
    head = false,
  ): Promise<void> {
    let status = 200;
    let body: unknown;
    try {
      body = await check();
    } catch (e) {
      if (!(e instanceof HttpException)) throw e;
      status = e.getStatus();
      body = e.getResponse();
    }
    const json = JSON.stringify(body);
    void reply
      .status(status)
      .type('application/json; charset=utf-8')
      .header('cache-control', 'no-store')
      // Lets another instance tell this process from one restarted at the same URL.
      .header(BOOT_HEADER, this.instance.boot)
      .header('content-length', Buffer.byteLength(json));
    await reply.send(head ? undefined : json);
  }
}
