/**
 * The names of narwhal's locks, in one place: every instance must spell a key the same way, and
 * a Redis deployment sees them (behind --cache-lock-redis-key-prefix) as `narinfo:<hash>` etc.
 */

/** Held while one instance looks a store path's narinfo up on the upstreams. */
export function narInfoLockKey(hash: string): string {
  return `narinfo:${hash}`;
}

/** Held while one instance downloads a NAR; its holder info is that instance's peer URL. */
export function narLockKey(name: string): string {
  return `nar:${name}`;
}

/** Held while an upload replaces or compares a side document (`realisations/…`, `ls/…`). */
export function documentLockKey(key: string): string {
  return `document:${key}`;
}

/** Held while one instance runs the LRU job. */
export const LRU_LOCK_KEY = 'lru';
