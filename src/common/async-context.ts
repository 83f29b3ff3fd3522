import { AsyncLocalStorage } from 'node:async_hooks';

/** What follows a piece of work through every await and callback it starts. */
export interface AsyncContext {
  /** The HTTP request the work is done for (see logging/request-context.ts). */
  reqId?: string;
  /** Work done for nobody waiting: a prefetch (see upstream/background.ts). */
  background?: true;
}

/**
 * The process's one AsyncLocalStorage. On Node 20 every enabled AsyncLocalStorage runs in a hook
 * for every async resource the process makes (each socket write, timer, tick and promise): alone,
 * 300,000 `process.nextTick`s cost ~57 ns each without one, ~75 ns with one and ~125 ns with two.
 * The request id and the background mark used to have one each; they share this one.
 */
export const asyncContext = new AsyncLocalStorage<AsyncContext>();
