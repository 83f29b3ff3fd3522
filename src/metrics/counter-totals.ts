import type { DownloadMetrics } from './download-metrics';
import type { NarInfoResult, NarResult, RequestMetrics, ServedSource } from './request-metrics';
import type { UpstreamMetrics } from './upstream-metrics';

/** Every counter the status page reads, summed over the labels it does not show (since start). */
export interface CounterTotals {
  narinfo: Record<NarInfoResult, number>;
  nar: Record<NarResult, number>;
  servedBytes: Record<ServedSource, number>;
  /** NAR body bytes received from upstreams (all of them, `other` too). */
  upstreamBytes: number;
  downloads: { stored: number; discarded: number };
  /** By upstream label: requests (every kind and outcome), errors (every reason), seconds waited for headers. */
  upstreams: Record<string, { requests: number; errors: number; seconds: number }>;
}

/**
 * The status page's view of the counters: their values, read from the flows' metrics (a walk over a
 * few dozen series; never on a request path — the status page reads it when sampling and when its
 * JSON is asked for).
 */
export async function readCounterTotals(
  requestMetrics: RequestMetrics,
  upstreamMetrics: UpstreamMetrics,
  downloadMetrics: DownloadMetrics,
): Promise<CounterTotals> {
  const [narinfo, nar, served, upBytes, downloads, upRequests, upErrors, upDuration] =
    await Promise.all([
      requestMetrics.narInfoRequests.get(),
      requestMetrics.narRequests.get(),
      requestMetrics.servedBytes.get(),
      upstreamMetrics.upstreamBytes.get(),
      downloadMetrics.downloads.get(),
      upstreamMetrics.upstreamRequests.get(),
      upstreamMetrics.upstreamErrors.get(),
      upstreamMetrics.upstreamDuration.get(),
    ]);
  const by = (m: { values: { labels: object; value: number }[] }, label: string) => {
    const out: Record<string, number> = {};
    for (const v of m.values) {
      const key = String((v.labels as Record<string, unknown>)[label]);
      out[key] = (out[key] ?? 0) + v.value;
    }
    return out;
  };
  const upstreams: CounterTotals['upstreams'] = {};
  const upstream = (url: string) => (upstreams[url] ??= { requests: 0, errors: 0, seconds: 0 });
  for (const [url, n] of Object.entries(by(upRequests, 'upstream'))) upstream(url).requests = n;
  for (const [url, n] of Object.entries(by(upErrors, 'upstream'))) upstream(url).errors = n;
  const sums = upDuration.values.filter((v) => v.metricName?.endsWith('_sum'));
  for (const [url, n] of Object.entries(by({ values: sums }, 'upstream'))) {
    upstream(url).seconds = n;
  }
  const pick = <K extends string>(values: Record<string, number>, keys: readonly K[]) =>
    Object.fromEntries(keys.map((k) => [k, values[k] ?? 0])) as Record<K, number>;
  return {
    narinfo: pick(by(narinfo, 'result'), ['hit', 'miss', 'not_found']),
    nar: pick(by(nar, 'result'), ['hit', 'download', 'joined', 'peer']),
    servedBytes: pick(by(served, 'source'), ['storage', 'download', 'peer']),
    upstreamBytes: upBytes.values.reduce((sum, v) => sum + v.value, 0),
    downloads: pick(by(downloads, 'outcome'), ['stored', 'discarded']),
    upstreams,
  };
}
