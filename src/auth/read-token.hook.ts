import { Injectable, Logger, type OnModuleInit } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { AccessRouteConfig } from '../common/access';
import { FrontDoor } from '../common/front-door';
import { ForbiddenError, ServiceUnavailableError, UnauthorizedError } from '../common/errors';
import { sendError } from '../common/http-error.filter';
import { AccessGuard } from './access.guard';

/**
 * The token check of reads (`GET`/`HEAD`) with --cache-require-read-token, and of `/metrics` with
 * --prometheus-require-token: a Fastify `onRequest` hook, so that the hot paths (narinfo and NAR
 * hits) pay for a sha256 and a map lookup and nothing of Nest's guard machinery, and a refused
 * request is answered before routing reaches Nest at all. The route's level comes from its Fastify
 * config (see Access); routes that need `write`, `delete` or `pin` are left to AccessGuard, and
 * paths no route takes to the 404 they get anyway. The front door's hot hits are checked by
 * AccessGuard.admitsReadAtOnce. Installed only when one of the two settings asks
 * for tokens: otherwise reads cost nothing extra.
 */
@Injectable()
export class ReadTokenHook implements OnModuleInit {
  private readonly logger = new Logger('auth');

  constructor(
    private readonly adapterHost: HttpAdapterHost,
    private readonly access: AccessGuard,
  ) {}

  onModuleInit(): void {
    // Hot hits answered before Fastify pass the same check first (see FrontDoor).
    FrontDoor.of(this.adapterHost.httpAdapter.getHttpServer())?.checkReads((authorization) =>
      this.access.admitsReadAtOnce(authorization),
    );
    const fastify = this.adapterHost.httpAdapter.getInstance<FastifyInstance>();
    fastify.addHook('onRequest', (request, reply, done) => {
      if (request.method !== 'GET' && request.method !== 'HEAD') return done();
      if (request.routeOptions.url === undefined) return done(); // no route: 404
      const level = (request.routeOptions.config as AccessRouteConfig).access ?? 'read';
      if (level !== 'read' && level !== 'metrics') return done();
      // A refused request is answered here (401, 403; 503 when the database cannot tell), and
      // the request goes no further.
      let admitted;
      try {
        admitted = this.access.admit(request, level);
      } catch (e) {
        this.refuse(reply, e);
        return;
      }
      if (admitted === true) return done();
      admitted.then(
        () => done(),
        (e: unknown) => this.refuse(reply, e),
      );
    });
  }

  private refuse(reply: FastifyReply, error: unknown): void {
    const expected =
      error instanceof UnauthorizedError ||
      error instanceof ForbiddenError ||
      error instanceof ServiceUnavailableError;
    if (!expected)
      this.logger.error(`checking a token: ${(error as Error).stack ?? String(error)}`);
    void sendError(reply, error);
  }
}
