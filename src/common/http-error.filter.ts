import {
  ArgumentsHost,
  Catch,
  HttpException,
  Logger,
  type ExceptionFilter,
  type OnModuleInit,
} from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
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
import { FrontDoor, type ErrorAnswer } from './front-door';

/** The challenge of a 401: browsers then ask for a user name and password (the token). */
export const BASIC_CHALLENGE = 'Basic realm="narwhal"';

/**
 * Maps domain errors to HTTP statuses; aborts the socket when a reply has already started. The front
 * door's cold routes answer their errors through it too.
 */
@Catch()
export class HttpErrorFilter implements ExceptionFilter, OnModuleInit {
  private readonly logger = new Logger('http');

  constructor(
    private readonly db: DatabaseHealth,
    private readonly adapterHost: HttpAdapterHost,
  ) {}

  onModuleInit(): void {
    FrontDoor.of(this.adapterHost.httpAdapter.getHttpServer())?.answerErrors((error) =>
      this.answer(error),
    );
  }

  catch(error: unknown, host: ArgumentsHost): void {
    const reply = host.switchToHttp().getResponse<FastifyReply>();
    if (reply.sent || reply.raw.headersSent) {
      // Mid-body: the only honest signal left is a broken connection.
      reply.raw.destroy(error instanceof Error ? error : undefined);
      return;
    }
    void sendError(reply, this.classify(error));
  }

  /**
   * The error as it is answered: a query that failed because the database is down becomes a 503
   * (logged once per outage, not here); an unexpected error (a 500) is logged.
   */
  classify(error: unknown): unknown {
    if (!(error instanceof HttpException) && this.db.noteFailure(error)) {
      error = new DatabaseUnavailableError('the database is unavailable');
    }
    if (statusOf(error)[0] === 500) {
      this.logger.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
    }
    return error;
  }

  /** The answer to `error` for a request Fastify never saw (see FrontDoor's cold routes). */
  answer(error: unknown): ErrorAnswer {
    return errorAnswer(this.classify(error));
  }
}

/** Answers `error` with its status, the headers that go with it and its message as text. */
export function sendError(reply: FastifyReply, error: unknown): FastifyReply {
  const answer = errorAnswer(error);
  for (let i = 0; i < answer.headers.length; i += 2) {
    void reply.header(answer.headers[i], answer.headers[i + 1]);
  }
  return reply.status(answer.status).send(answer.body);
}

/** `error`'s status, the headers that go with it (the content type last) and its message as text. */
export function errorAnswer(error: unknown): ErrorAnswer {
  const [status, message] = statusOf(error);
  const headers: string[] = [];
  if (error instanceof MethodNotAllowedError) headers.push('allow', 'GET, HEAD');
  if (error instanceof UnauthorizedError) headers.push('www-authenticate', BASIC_CHALLENGE);
  if (error instanceof RangeNotSatisfiableError) {
    headers.push('content-range', `bytes */${error.length}`);
  }
  if (error instanceof ServiceUnavailableError) {
    headers.push('retry-after', String(error.retryAfterSeconds));
  }
  headers.push('content-type', 'text/plain; charset=utf-8');
  return { status, headers, body: `${message}\n` };
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
