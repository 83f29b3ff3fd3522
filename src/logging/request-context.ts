import { asyncContext } from '../common/async-context';

/**
 * The request a piece of code runs for. Set around each HTTP request (see request-logging.ts), so that
 * a service's `new Logger(context).log(…)` line carries the id of the request that caused it. Work a
 * request starts in the background (a shared NAR download) keeps the id of the request that started it.
 */
export interface RequestContext {
  reqId: string;
}

export function currentRequestId(): string | undefined {
  return asyncContext.getStore()?.reqId;
}

export function runInRequestContext<T>(context: RequestContext, fn: () => T): T {
  return asyncContext.run({ reqId: context.reqId }, fn);
}
