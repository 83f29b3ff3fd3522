import type { CounterTotals } from '../metrics/metrics.service';

/** The counters at one moment. */
export interface CounterSample {
  /** Epoch ms. */
  at: number;
  totals: CounterTotals;
}

/** What happened during one interval of the chart (differences of two samples). */
export interface HistoryPoint {
  /** Start of the interval (ISO 8601). */
  from: string;
  /** Its length; the last point, the interval still running, is shorter. */
  seconds: number;
  narinfo: { hit: number; miss: number; notFound: number };
  nar: { hit: number; download: number; joined: number; peer: number };
  /** NAR bytes sent to clients (every source). */
  servedBytes: number;
  /** NAR bytes received from upstreams. */
  upstreamBytes: number;
  /** Upstream errors (every upstream, every reason). */
  upstreamErrors: number;
}

/**
 * The counters sampled every `intervalMs`, the last `intervals` intervals of them (a fixed ring): the
 * status page's chart of the last hour. Samples hold running totals, so a point is the difference of
 * two neighbours and a missed sample only makes one point longer.
 */
export class CounterHistory {
  private readonly samples: CounterSample[] = [];

  constructor(
    readonly intervalMs: number,
    readonly intervals: number,
  ) {}

  add(sample: CounterSample): void {
    const last = this.samples.at(-1);
    if (last && sample.at <= last.at) return;
    this.samples.push(sample);
    while (this.samples.length > this.intervals + 1) this.samples.shift();
  }

  /** The oldest sample kept (the start of the window), if any. */
  get oldest(): CounterSample | undefined {
    return this.samples[0];
  }

  /**
   * One point per interval between kept samples, oldest first, then the interval from the last
   * sample to `now` (the one still running), so the chart moves between samples.
   */
  points(now: CounterSample): HistoryPoint[] {
    const all = [...this.samples];
    const last = all.at(-1);
    if (!last || now.at > last.at) all.push(now);
    const points: HistoryPoint[] = [];
    for (let i = 1; i < all.length; i++) points.push(difference(all[i - 1], all[i]));
    // The window is `intervals` long: the running interval pushes the oldest point out.
    return points.slice(-this.intervals);
  }
}

function difference(a: CounterSample, b: CounterSample): HistoryPoint {
  const x = a.totals;
  const y = b.totals;
  const sum = (r: Record<string, number>) => Object.values(r).reduce((s, v) => s + v, 0);
  const errors = (t: CounterTotals) => Object.values(t.upstreams).reduce((s, u) => s + u.errors, 0);
  return {
    from: new Date(a.at).toISOString(),
    seconds: Math.round((b.at - a.at) / 100) / 10,
    narinfo: {
      hit: y.narinfo.hit - x.narinfo.hit,
      miss: y.narinfo.miss - x.narinfo.miss,
      notFound: y.narinfo.not_found - x.narinfo.not_found,
    },
    nar: {
      hit: y.nar.hit - x.nar.hit,
      download: y.nar.download - x.nar.download,
      joined: y.nar.joined - x.nar.joined,
      peer: y.nar.peer - x.nar.peer,
    },
    servedBytes: sum(y.servedBytes) - sum(x.servedBytes),
    upstreamBytes: y.upstreamBytes - x.upstreamBytes,
    upstreamErrors: errors(y) - errors(x),
  };
}
