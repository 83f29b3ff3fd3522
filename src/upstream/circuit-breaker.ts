/**
 * The health of one upstream as a circuit breaker. `closed`: requests go through. After `failures`
 * failures in a row (timeouts, connection errors, 5xx, 429) it opens: requests are skipped at once
 * for a back-off. When the back-off has passed it is `half-open`: one request at a time is let
 * through as a trial; its success closes the circuit, its failure opens it again for twice the
 * back-off (up to `maxBackoffMs`). An answer with `Retry-After` (429, 503) opens it for that long.
 */

export type CircuitState = 'closed' | 'open' | 'half-open';

export interface BreakerOptions {
  /** Consecutive failures that open the circuit; 0 never opens it. */
  failures: number;
  backoffMs: number;
  maxBackoffMs: number;
}

export interface CircuitSnapshot {
  state: CircuitState;
  /** Failures in a row so far. */
  consecutiveFailures: number;
  /** While open: when the next trial request may go (epoch ms). */
  retryAt?: number;
}

export class CircuitBreaker {
  private failuresInRow = 0;
  /** While open: when the back-off ends. */
  private openUntil = 0;
  private opened = false;
  /** The back-off used the last time the circuit opened (0: not open since the last success). */
  private backoff = 0;
  /** A half-open trial request is running. */
  private trialRunning = false;

  constructor(
    private readonly options: BreakerOptions,
    private readonly now: () => number = Date.now,
  ) {}

  get state(): CircuitState {
    if (!this.opened) return 'closed';
    return this.now() < this.openUntil ? 'open' : 'half-open';
  }

  /**
   * Whether a request may go now. In half-open state the one allowed request becomes the trial:
   * report its end with `succeeded`, `failed` or `released`.
   */
  tryPass(): boolean {
    switch (this.state) {
      case 'closed':
        return true;
      case 'open':
        return false;
      case 'half-open':
        if (this.trialRunning) return false;
        this.trialRunning = true;
        return true;
    }
  }

  succeeded(): void {
    this.failuresInRow = 0;
    this.opened = false;
    this.backoff = 0;
    this.trialRunning = false;
  }

  /** A failure; `retryAfterMs` (from a Retry-After header) opens the circuit for that long. */
  failed(retryAfterMs?: number): void {
    this.failuresInRow++;
    const trial = this.trialRunning;
    this.trialRunning = false;
    const { failures, backoffMs, maxBackoffMs } = this.options;
    if (failures === 0) return;
    if (retryAfterMs !== undefined && retryAfterMs > 0) {
      this.open(Math.min(retryAfterMs, maxBackoffMs));
      return;
    }
    if (trial || (this.opened && this.state === 'half-open')) {
      this.open(Math.min(maxBackoffMs, Math.max(backoffMs, this.backoff * 2)));
    } else if (!this.opened && this.failuresInRow >= failures) {
      this.open(backoffMs);
    }
  }

  /** A request let through ended without saying anything about the upstream (it was cancelled). */
  released(): void {
    this.trialRunning = false;
  }

  snapshot(): CircuitSnapshot {
    const state = this.state;
    return state === 'open'
      ? { state, consecutiveFailures: this.failuresInRow, retryAt: this.openUntil }
      : { state, consecutiveFailures: this.failuresInRow };
  }

  private open(ms: number): void {
    this.opened = true;
    this.backoff = ms;
    this.openUntil = this.now() + ms;
  }
}

/**
 * A `Retry-After` header in milliseconds from now: delta-seconds or an HTTP date. Undefined when
 * absent or unreadable.
 */
export function retryAfterMs(
  header: string | string[] | undefined,
  now = Date.now(),
): number | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  if (value === undefined) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at - now);
}
