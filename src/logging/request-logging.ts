import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { accessLineWriter, type AccessFields } from './access-line';
import { runInRequestContext } from './request-context';

export const REQUEST_ID_HEADER = 'x-request-id';

/**
 * Probes and the status page's data are polled every few seconds (an open status page asks every
 * 2 s): their access lines are debug output.
 */
const PROBE_PATHS = new Set(['/healthz', '/readyz', '/_narwhal/status.json']);

/** What an incoming `x-request-id` may look like to be kept (else a fresh id is made). */
const ACCEPTED_ID = /^[A-Za-z0-9._:/+=@-]{1,128}$/;

/**
 * Fastify's `genReqId`: the caller's `x-request-id` when it is a sane token (a proxy or load balancer
 * in front of narwhal sets one), otherwise a random UUID.
 */
export function requestIdFor(req: IncomingMessage): string {
  const given = req.headers[REQUEST_ID_HEADER];
  return requestIdFromHeader(Array.isArray(given) ? given[0] : given);
}

/** requestIdFor, from the header's value. */
export function requestIdFromHeader(given: string | undefined): string {
  return given !== undefined && ACCEPTED_ID.test(given) ? given : randomUUID();
}

/**
 * Per request: echo the id in an `x-request-id` response header, run the rest of the request in a
 * context that Nest's loggers read the id from, and write one access line when the response ends
 * (or is cut).
 */
export function installRequestLogging(fastify: FastifyInstance): void {
  const write = accessLineWriter(fastify.log as Logger);
  fastify.addHook('onRequest', (request, reply, done) => {
    void reply.header(REQUEST_ID_HEADER, request.id);
    let logged = false;
    const log = (completed: boolean) => {
      if (logged) return;
      logged = true;
      logAccess(write, request, reply, completed);
    };
    reply.raw.once('finish', () => log(true)); // the whole response went to the socket
    reply.raw.once('close', () => log(false)); // closed without 'finish': cut short
    runInRequestContext({ reqId: request.id }, done);
  });
  // A request body is read in the socket's own async context; enter the request's again before the
  // handler runs.
  fastify.addHook('preValidation', (request, _reply, done) => {
    runInRequestContext({ reqId: request.id }, done);
  });
}

/** The access line of a request the front door answered (see FrontDoor): as logAccess writes it. */
export function frontDoorAccessLine(
  logger: Logger,
): (
  reqId: string,
  url: string,
  ms: number,
  completed: boolean,
  method?: string,
  statusCode?: number,
) => void {
  const write = accessLineWriter(logger);
  return (reqId, url, responseTime, completed, method = 'GET', statusCode = 200) => {
    const fields: AccessFields = { reqId, method, url, statusCode, responseTime };
    if (completed) write('info', fields, 'request completed');
    else write('info', { ...fields, aborted: true }, 'response aborted');
  };
}

function logAccess(
  write: ReturnType<typeof accessLineWriter>,
  request: FastifyRequest,
  reply: FastifyReply,
  completed: boolean,
): void {
  const fields: AccessFields = {
    reqId: request.id,
    method: request.method,
    url: request.url,
    statusCode: reply.statusCode,
    responseTime: Math.round(reply.elapsedTime),
  };
  if (!completed) {
    // The connection closed before the whole response went out: the client left, or narwhal cut a
    // body it could not complete honestly.
    write('info', { ...fields, aborted: true }, 'response aborted');
  } else if (PROBE_PATHS.has(request.url.split('?')[0])) {
    write('debug', fields, 'request completed');
  } else {
    write('info', fields, 'request completed');
  }
}
