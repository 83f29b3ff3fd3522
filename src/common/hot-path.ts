import type { FastifyInstance, FastifyReply } from 'fastify';

/** What a hot path answers with: the whole body and the headers that go with it. */
export interface HotAnswer {
  body: Buffer;
  headers: Record<string, string>;
}

/**
 * Answers the GETs of one route straight from memory, before Nest's pipeline, when `answer` has
 * the whole body at hand (a narinfo or a small NAR served lately); anything else goes on to the
 * route's controller as before.
 *
 * A `preHandler` hook: it runs after every `onRequest` hook (the request id and access line, the
 * read-token check, which has refused a request without a valid token by then) and before the
 * handler; the `onResponse` hooks (HTTP metrics) run as for any answer. What it skips is only the
 * per-request work of the controller's route in Nest (execution context, parameter decorators,
 * exception zone): for a hit of a few hundred bytes that was a large part of the cost.
 */
export function installHotPath(
  fastify: FastifyInstance,
  route: string,
  answer: (param: string) => HotAnswer | undefined,
  param: string,
): void {
  fastify.addHook('preHandler', (request, reply, done) => {
    if (request.method !== 'GET' || request.routeOptions.url !== route) return done();
    if (request.headers.range !== undefined) return done();
    const value = (request.params as Record<string, string | undefined>)[param];
    const hot = value === undefined ? undefined : answer(value);
    if (!hot) return done();
    send(reply, hot);
  });
}

function send(reply: FastifyReply, hot: HotAnswer): void {
  void reply.headers(hot.headers).send(hot.body);
}
