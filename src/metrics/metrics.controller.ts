import { Controller, Get, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { Access } from '../common/access';
import { MetricsService } from './metrics.service';

/**
 * `GET /metrics` in the Prometheus text format (registered only with --prometheus-enabled); with
 * --prometheus-require-token it needs a token with the `metrics` permission.
 */
@Controller()
@Access('metrics')
export class MetricsController {
  constructor(private readonly metrics: MetricsService) {}

  @Get('metrics')
  async scrape(@Res() reply: FastifyReply): Promise<void> {
    const text = await this.metrics.render();
    await reply.type(this.metrics.contentType).send(text);
  }
}
