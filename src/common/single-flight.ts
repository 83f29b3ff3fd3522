/**
 * Concurrent callers that ask for the same key share one pending piece of work: the first caller
 * starts it, later callers get the same promise, and the key is free again once it settles (so a
 * later call starts afresh). Used where a miss must cause exactly one lookup or one download claim
 * per instance, whatever the number of requests waiting for it.
 */
export class SingleFlight<K, V> {
  private readonly pending = new Map<K, Promise<V>>();

  /** The pending work for `key`, or `work()` started now and shared until it settles. */
  run(key: K, work: () => Promise<V>): Promise<V> {
    let p = this.pending.get(key);
    if (!p) {
      p = work().finally(() => this.pending.delete(key));
      this.pending.set(key, p);
    }
    return p;
  }

  /** True while work for `key` is pending. */
  has(key: K): boolean {
    return this.pending.has(key);
  }
}
