import { asyncContext } from '../common/async-context';

/**
 * Runs `work` as work done for nobody waiting (prefetch), so that the upstream requests it makes are
 * told apart from clients' (UpstreamClient counts both). The mark follows the work through every
 * await, along with the id of the request that led to it.
 */
export function inBackground<T>(work: () => Promise<T>): Promise<T> {
  return asyncContext.run({ ...asyncContext.getStore(), background: true }, work);
}

/** True inside inBackground. */
export function isBackground(): boolean {
  return asyncContext.getStore()?.background === true;
}
