import { ConsoleLogger, type LogLevel as NestLogLevel } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, type NestFastifyApplication } from '@nestjs/platform-fastify';
import { AppModule } from './app.module';
import type { AppConfig, LogLevel } from './config/app-config';

const LEVELS: Record<LogLevel, NestLogLevel[]> = {
  error: ['fatal', 'error'],
  warn: ['fatal', 'error', 'warn'],
  info: ['fatal', 'error', 'warn', 'log'],
  debug: ['fatal', 'error', 'warn', 'log', 'debug'],
  verbose: ['fatal', 'error', 'warn', 'log', 'debug', 'verbose'],
};

/** Nest's own start-up chatter (module and route listings) is debug output for narwhal. */
const FRAMEWORK_CONTEXTS = new Set([
  'InstanceLoader',
  'RoutesResolver',
  'RouterExplorer',
  'NestFactory',
]);

class NarwhalLogger extends ConsoleLogger {
  override log(message: unknown, ...rest: unknown[]): void {
    const context = rest[rest.length - 1];
    if (typeof context === 'string' && FRAMEWORK_CONTEXTS.has(context)) {
      super.debug(message, ...rest);
      return;
    }
    super.log(message, ...rest);
  }
}

export function createLogger(level: LogLevel): ConsoleLogger {
  return new NarwhalLogger('narwhal', { logLevels: LEVELS[level], json: !process.stdout.isTTY });
}

/** Builds the application (not yet listening). Used by `narwhal serve` and by the module tests. */
export async function createApp(
  config: AppConfig,
  logger = createLogger(config.logLevel),
): Promise<NestFastifyApplication> {
  const adapter = new FastifyAdapter({
    // HEAD routes are explicit: a HEAD must never start a NAR download.
    exposeHeadRoutes: false,
    return503OnClosing: true,
  });
  const app = await NestFactory.create<NestFastifyApplication>(AppModule.forRoot(config), adapter, {
    logger,
    abortOnError: false,
  });
  // Uploads are not supported (yet): say so instead of a bare 404.
  app
    .getHttpAdapter()
    .getInstance()
    .route({
      method: ['PUT', 'POST', 'DELETE', 'PATCH'],
      url: '/*',
      // Answer before Fastify looks at the body (else an upload gets 415 or 413, not 405).
      onRequest: async (_req, reply) => {
        await reply
          .status(405)
          .header('allow', 'GET, HEAD')
          .type('text/plain; charset=utf-8')
          .send('method not allowed\n');
      },
      handler: () => Promise.resolve(undefined),
    });
  app.enableShutdownHooks();
  return app;
}
