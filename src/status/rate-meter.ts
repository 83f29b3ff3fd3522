/**
 * Transfer rates of running downloads, measured over a window of at least `windowMs` whoever asks
 * and however often: each key keeps an anchor (an earlier value and its time) and the rate computed
 * when the anchor last moved. So two browsers polling every second see the same figure as one.
 */
export class RateMeter {
  private readonly anchors = new Map<string, { at: number; value: number; rate: number | null }>();

  constructor(private readonly windowMs = 2_000) {}

  /**
   * The rate (units per second) of `key`, whose running total is `value` at `now`; `average` is
   * the answer until a whole window has passed since the key was first seen.
   */
  observe(key: string, value: number, now: number, average: number): number {
    const anchor = this.anchors.get(key);
    if (!anchor) {
      this.anchors.set(key, { at: now, value, rate: null });
      return average;
    }
    if (now - anchor.at >= this.windowMs) {
      anchor.rate = ((value - anchor.value) * 1000) / (now - anchor.at);
      anchor.at = now;
      anchor.value = value;
    }
    return anchor.rate ?? average;
  }

  /** Forgets every key not in `live` (downloads that ended). */
  retain(live: ReadonlySet<string>): void {
    for (const key of this.anchors.keys()) if (!live.has(key)) this.anchors.delete(key);
  }
}
