import pino, { type DestinationStream, type Level, type Logger } from 'pino';
import type { LogLevel } from '../config/app-config';
import { LineBatch, type ByteSink } from './line-batch';
import { prettyStream } from './pretty';
import { REDACTED_PATHS, redactCredentials } from './redact';

/** narwhal's `--log-level` names → pino levels (`verbose` is pino's `trace`). */
export const PINO_LEVELS: Record<LogLevel, Level> = {
  error: 'error',
  warn: 'warn',
  info: 'info',
  debug: 'debug',
  verbose: 'trace',
};

export interface PinoLoggerOptions {
  level: LogLevel;
  /** Where lines go; default stdout. */
  destination?: DestinationStream;
  /** Human-readable lines instead of JSON; default: when stdout is a terminal. */
  pretty?: boolean;
}

/**
 * The one pino logger of the process: Fastify logs through it (with the request id bound on every
 * request's child logger) and so does Nest (PinoNestLogger). JSON lines with an ISO time and the level
 * as a word; credentials in URLs and authorization/cookie headers never reach the output.
 *
 * Lines go to stdout through LineBatch: the lines of up to 10 ms are written together,
 * synchronously (see there).
 */
export function createPinoLogger(options: PinoLoggerOptions): Logger {
  const pretty = options.pretty ?? process.stdout.isTTY === true;
  const destination =
    options.destination ?? (pretty ? prettyStream(process.stdout) : new LineBatch(stdoutBytes()));
  return pino(
    {
      level: PINO_LEVELS[options.level],
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      serializers: { err: serializeError },
      hooks: {
        logMethod(args, method) {
          for (let i = 0; i < args.length; i++) args[i] = scrub(args[i]);
          return method.apply(this, args);
        },
      },
    },
    destination,
  );
}

/**
 * Synchronous writes of Buffers to stdout. SonicBoom (pino.destination) takes Buffers in its
 * `buffer` content mode and retries a write that a full non-blocking pipe refused (EAGAIN) before
 * it returns; its typings only know the string mode.
 */
function stdoutBytes(): ByteSink {
  return pino.destination({ dest: 1, sync: true, contentMode: 'buffer' }) as unknown as ByteSink;
}

/** Strings, and the string fields of a merging object, without URL credentials. */
function scrub(value: unknown): unknown {
  if (typeof value === 'string') return redactCredentials(value);
  if (value === null || typeof value !== 'object' || value instanceof Error) return value;
  let copy: Record<string, unknown> | undefined;
  for (const [k, v] of Object.entries(value)) {
    if (typeof v !== 'string') continue;
    const clean = redactCredentials(v);
    if (clean !== v) (copy ??= { ...(value as Record<string, unknown>) })[k] = clean;
  }
  return copy ?? value;
}

function serializeError(err: Error): ReturnType<typeof pino.stdSerializers.err> {
  const out = pino.stdSerializers.err(err);
  if (typeof out.message === 'string') out.message = redactCredentials(out.message);
  if (typeof out.stack === 'string') out.stack = redactCredentials(out.stack);
  return out;
}
