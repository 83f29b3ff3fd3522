/**
 * Store path hashes that no upstream has, remembered for a while so that repeated misses (every
 * `nix build` asks for every path it might substitute) do not each ask every upstream again.
 * Bounded: beyond `maxEntries` the oldest entries are dropped. In memory, per instance.
 */
export class NegativeCache {
  /** hash → when the entry expires (epoch ms), oldest first (insertion order). */
  private readonly entries = new Map<string, number>();

  constructor(
    private readonly ttlMs: number,
    private readonly maxEntries: number,
    private readonly now: () => number = Date.now,
  ) {}

  get enabled(): boolean {
    return this.ttlMs > 0;
  }

  get size(): number {
    return this.entries.size;
  }

  /** True while `hash` is remembered as missing. */
  has(hash: string): boolean {
    const until = this.entries.get(hash);
    if (until === undefined) return false;
    if (until > this.now()) return true;
    this.entries.delete(hash);
    return false;
  }

  /** Remembers `hash` as missing for the TTL (a no-op when the cache is off). */
  add(hash: string): void {
    if (!this.enabled) return;
    this.entries.delete(hash);
    this.entries.set(hash, this.now() + this.ttlMs);
    while (this.entries.size > this.maxEntries) {
      this.entries.delete(this.entries.keys().next().value as string);
    }
  }

  /** Forgets `hash` (it was found, or uploaded). */
  forget(hash: string): void {
    this.entries.delete(hash);
  }
}
