/** The prefix of every narwhal metric name, the process metrics' included. */
export const METRIC_PREFIX = 'narwhal_';

/** The full name of the metric `n` (under METRIC_PREFIX). */
export function metricName(n: string): string {
  return METRIC_PREFIX + n;
}
