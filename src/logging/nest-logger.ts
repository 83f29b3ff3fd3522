import type { LoggerService } from '@nestjs/common';
import type { Level, Logger } from 'pino';
import { currentRequestId } from './request-context';

/** Nest's own start-up chatter (module and route listings) is debug output for narwhal. */
const FRAMEWORK_CONTEXTS = new Set([
  'InstanceLoader',
  'RoutesResolver',
  'RouterExplorer',
  'NestFactory',
  'NestApplication',
]);

/**
 * Nest's LoggerService over the process's pino logger, so that services keep logging with
 * `new Logger('context')` and their lines land in the same stream as Fastify's: `context` becomes a
 * field, and a line written while a request is handled carries that request's `reqId`.
 */
export class PinoNestLogger implements LoggerService {
  constructor(readonly pino: Logger) {}

  log(message: unknown, ...params: unknown[]): void {
    this.write('info', message, params);
  }

  error(message: unknown, ...params: unknown[]): void {
    this.write('error', message, params);
  }

  warn(message: unknown, ...params: unknown[]): void {
    this.write('warn', message, params);
  }

  debug(message: unknown, ...params: unknown[]): void {
    this.write('debug', message, params);
  }

  verbose(message: unknown, ...params: unknown[]): void {
    this.write('trace', message, params);
  }

  fatal(message: unknown, ...params: unknown[]): void {
    this.write('fatal', message, params);
  }

  /**
   * Nest passes `(message, ...params, context)`; `error` passes `(message, stack?, context)`. The
   * context is the last string parameter (Nest's `Logger` appends its own).
   */
  private write(level: Level, message: unknown, params: unknown[]): void {
    const rest = [...params];
    const context =
      rest.length > 0 && typeof rest[rest.length - 1] === 'string'
        ? (rest.pop() as string)
        : undefined;
    if (level === 'info' && context !== undefined && FRAMEWORK_CONTEXTS.has(context))
      level = 'debug';
    if (!this.pino.isLevelEnabled(level)) return;

    const fields: Record<string, unknown> = {};
    if (context !== undefined) fields.context = context;
    const reqId = currentRequestId();
    if (reqId !== undefined) fields.reqId = reqId;
    let msg: string | undefined;
    if (message instanceof Error) {
      fields.err = message;
      msg = message.message;
    } else if (typeof message === 'object' && message !== null) {
      fields.data = message;
    } else {
      msg = String(message);
    }
    if (level === 'error' || level === 'fatal') {
      const stack = rest.shift();
      if (typeof stack === 'string' && stack) fields.stack = stack;
    }
    const extra = rest.filter((p) => p !== undefined);
    if (extra.length > 0) fields.params = extra;
    this.pino[level](fields, msg);
  }
}
