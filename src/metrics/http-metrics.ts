import { Injectable, type OnModuleInit } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import type { FastifyInstance } from 'fastify';
import { FrontDoor } from '../common/front-door';
import { MetricsService } from './metrics.service';

/** Route label of requests that matched no route (Fastify's not-found handler). */
export const UNMATCHED_ROUTE = 'unmatched';

/**
 * Counts every HTTP response by its matched route pattern (`/nar/:name`, never the raw URL, which
 * would make one series per store path), method and status, from a Fastify `onResponse` hook, and
 * the front door's answers the same way.
 */
@Injectable()
export class HttpMetrics implements OnModuleInit {
  constructor(
    private readonly adapterHost: HttpAdapterHost,
    private readonly metrics: MetricsService,
  ) {}

  onModuleInit(): void {
    FrontDoor.of(this.adapterHost.httpAdapter.getHttpServer())?.observe({
      response: (route, method, status, seconds) =>
        this.metrics.httpResponse(route, method, status, seconds),
    });
    const fastify = this.adapterHost.httpAdapter.getInstance<FastifyInstance>();
    fastify.addHook('onResponse', (request, reply, done) => {
      this.metrics.httpResponse(
        request.routeOptions.url ?? UNMATCHED_ROUTE,
        request.method,
        reply.statusCode,
        reply.elapsedTime / 1000,
      );
      done();
    });
  }
}
