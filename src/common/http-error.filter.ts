import { ArgumentsHost, Catch, HttpException, Logger, type ExceptionFilter } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { NixFormatError } from '../nix/errors';
import { DatabaseHealth } from '../database/database-health';
import {
  ConflictError,
  DatabaseUnavailableError,
  DownloadFailedError,
  ForbiddenError,
  InsufficientStorageError,
  MethodNotAllowedError,
  NotFoundError,
  RangeNotSatisfiableError,
  ServiceUnavailableError,
  UnauthorizedError,
  UnsupportedEncodingError,
  UploadRejectedError,
  UploadTooLargeError,
  UpstreamUnavailableError,
} from './errors';

/** The challenge of a 401: browsers then ask for a user name and password (the token). */
export const BASIC_CHALLENGE = 'Basic realm="narwhal"';

/** Maps domain errors to HTTP statuses; aborts the socket when a reply has already started. */
@Catch()
export class HttpErrorFilter implements ExceptionFilter {
  private readonly logger = new Logger('http');

  constructor(private readonly db: DatabaseHealth) {}

  catch(error: unknown, host: ArgumentsHost): void {
    const reply = host.switchToHttp().getResponse<FastifyReply>();
    if (reply.sent || reply.raw.headersSent) {
      // Mid-body: the only honest signal left is a broken connection.
      reply.raw.destroy(error instanceof Error ? error : undefined);
      return;
    }
    // A query that failed because the database is down: 503 (logged once per outage, not here).
    if (!(error instanceof HttpException) && this.db.noteFailure(error)) {
      error = new DatabaseUnavailableError('the database is unavailable');
    }
    if (statusOf(error)[0] === 500) {
      this.logger.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
    }
    void sendError(reply, error);
  }
}

/** Answers `error` with its status, the headers that go with it and its message as text. */
export function sendError(reply: FastifyReply, error: unknown): FastifyReply {
  const [status, message] = statusOf(error);
  if (error instanceof MethodNotAllowedError) void reply.header('allow', 'GET, HEAD');
  if (error instanceof UnauthorizedError) void reply.header('www-authenticate', BASIC_CHALLENGE);
  if (error instanceof RangeNotSatisfiableError) {
    void reply.header('content-range', `bytes */${error.length}`);
  }
  if (error instanceof ServiceUnavailableError) {
    void reply.header('retry-after', String(error.retryAfterSeconds));
  }
  return reply.status(status).type('text/plain; charset=utf-8').send(`${message}\n`);
}

function statusOf(error: unknown): [number, string] {
  if (error instanceof NixFormatError) return [400, error.message];
  if (error instanceof UploadTooLargeError) return [413, error.message];
  if (error instanceof UnsupportedEncodingError) return [415, error.message];
  if (error instanceof UploadRejectedError) return [400, error.message];
  if (error instanceof UnauthorizedError) return [401, error.message || 'authentication required'];
  if (error instanceof ForbiddenError) return [403, error.message || 'forbidden'];
  if (error instanceof NotFoundError) return [404, error.message || 'not found'];
  if (error instanceof ConflictError) return [409, error.message];
  // Nix reads 404 as "not here" and falls back; a 5xx would make it retry and then give up on us.
  if (error instanceof UpstreamUnavailableError) return [404, 'not found'];
  if (error instanceof MethodNotAllowedError) return [405, 'method not allowed'];
  if (error instanceof RangeNotSatisfiableError) return [416, error.message];
  // The upstream's bytes were bad before the first one reached the client: a retry fetches them again.
  if (error instanceof DownloadFailedError) return [502, 'upstream sent a broken NAR'];
  if (error instanceof InsufficientStorageError) return [507, error.message];
  if (error instanceof ServiceUnavailableError) return [503, error.message];
  if (error instanceof HttpException) return [error.getStatus(), error.message];
  return [500, 'internal error'];
}
