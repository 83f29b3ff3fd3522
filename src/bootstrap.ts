import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, type NestFastifyApplication } from '@nestjs/platform-fastify';
import { createServer, type RequestListener, type Server } from 'node:http';
import { LogController, type FastifyServerOptions } from 'fastify';
import type { DestinationStream, Logger } from 'pino';
import { AppModule } from './app.module';
import { FastLane } from './common/fast-lane';
import { FrontDoor } from './common/front-door';
import type { AppConfig, LogLevel } from './config/app-config';
import { PinoNestLogger } from './logging/nest-logger';
import { createPinoLogger } from './logging/pino-logger';
import {
  frontDoorAccessLine,
  installRequestLogging,
  requestIdFor,
  requestIdFromHeader,
} from './logging/request-logging';

/**
 * The process's logger: pino (JSON lines, or human lines on a terminal) with Nest's LoggerService
 * on top, so that `new Logger('context')` in services writes to the same stream as Fastify.
 */
export function createLogger(
  level: LogLevel,
  options: { destination?: DestinationStream; pretty?: boolean } = {},
): PinoNestLogger {
  return new PinoNestLogger(createPinoLogger({ level, ...options }));
}

/** Builds the application (not yet listening). Used by `narwhal serve` and by the module tests. */
export async function createApp(
  config: AppConfig,
  logger = createLogger(config.logLevel),
): Promise<NestFastifyApplication> {
  // Hot hits are answered before Fastify (see FrontDoor); the hot-path providers add their routes.
  const door = new FrontDoor(config.access.requireReadToken, requestIdFor, requestIdFromHeader);
  let lane: FastLane | undefined;
  const adapter = new FastifyAdapter({
    serverFactory: (handler: RequestListener, options: FastifyServerOptions) =>
      serveThrough(door, handler, options, (server) => {
        if (config.fastLane) (lane = new FastLane(door, server)).install();
      }),
    // HEAD routes are explicit: a HEAD must never start a NAR download.
    exposeHeadRoutes: false,
    return503OnClosing: true,
    // On close, keep-alive connections without a request in flight are closed at once; the others
    // when their response ends (see shutdown/graceful-shutdown.ts).
    forceCloseConnections: 'idle',
    loggerInstance: logger.pino,
    // One access line per request is written by installRequestLogging instead of Fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: requestIdFor,
    // No Nest middleware is used: without middie, a request runs one onRequest hook fewer.
    skipMiddie: true,
  });
  installRequestLogging(adapter.getInstance());
  door.observe({ accessLine: frontDoorAccessLine(adapter.getInstance().log as Logger) });
  adapter.getInstance().addHook('preClose', (done) => {
    door.close();
    lane?.closeIdle();
    done();
  });
  const app = await NestFactory.create<NestFastifyApplication>(AppModule.forRoot(config), adapter, {
    logger,
    abortOnError: false,
    bodyParser: false,
  });
  const fastify = app.getHttpAdapter().getInstance();
  // No request body is parsed, ever: uploads read theirs as streams (a NAR is never held in memory),
  // and nothing else takes one. Fastify leaves an unparsed body for the handler to read.
  fastify.removeAllContentTypeParsers();
  fastify.addContentTypeParser('*', (_request, _payload, done) => done(null));
  // What no upload, delete or pin route takes (and every PUT/DELETE without --cache-allow-put-verb
  // or --cache-allow-delete-verb): say so instead of a bare 404. Routes with a fixed path win.
  fastify.route({
    method: ['PUT', 'POST', 'DELETE', 'PATCH'],
    url: '/*',
    // Answer before the body is looked at.
    onRequest: async (_req, reply) => {
      await reply
        .status(405)
        .header('allow', 'GET, HEAD')
        .type('text/plain; charset=utf-8')
        .send('method not allowed\n');
    },
    handler: () => Promise.resolve(undefined),
  });
  // No enableShutdownHooks(): `narwhal serve` handles SIGTERM/SIGINT with GracefulShutdown, which
  // drains connections first and exits 0 (Nest's handler would re-raise the signal).
  return app;
}

/**
 * The node:http server Fastify would make (its timeouts), with `door` asked first for every request.
 */
function serveThrough(
  door: FrontDoor,
  fastify: RequestListener,
  options: FastifyServerOptions,
  made: (server: Server) => void,
): Server {
  const server = createServer((req, res) => {
    if (!door.answer(req, res)) fastify(req, res);
  });
  if (options.keepAliveTimeout !== undefined) server.keepAliveTimeout = options.keepAliveTimeout;
  if (options.requestTimeout !== undefined) server.requestTimeout = options.requestTimeout;
  server.setTimeout(options.connectionTimeout ?? 0);
  if (options.maxRequestsPerSocket) server.maxRequestsPerSocket = options.maxRequestsPerSocket;
  door.attach(server);
  made(server);
  return server;
}
