import { AsyncLocalStorage } from 'node:async_hooks';

/**
 * Marks work done for nobody waiting (prefetch) so that the upstream requests it makes are told
 * apart from clients' (UpstreamClient counts both): the mark follows the work through every await.
 */
const background = new AsyncLocalStorage<true>();

/** Runs `work` as background work: the upstream requests it makes count as such. */
export function inBackground<T>(work: () => Promise<T>): Promise<T> {
  return background.run(true, work);
}

/** True inside inBackground. */
export function isBackground(): boolean {
  return background.getStore() === true;
}
