import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildConfig } from '../config/app-config';
import { MetricsService } from './metrics.service';

/**
 * The Grafana dashboard shipped in docker/monitoring queries only metrics narwhal exports: every
 * `narwhal_…` name in its PromQL is in MetricsService's registry (a histogram's `_bucket`, `_sum`
 * and `_count` series count as the histogram), and it covers what the issue asked it to show.
 */

const DASHBOARD = join(
  __dirname,
  '..',
  '..',
  'docker',
  'monitoring',
  'grafana',
  'dashboards',
  'narwhal.json',
);

interface Panel {
  id?: number;
  title?: string;
  type: string;
  targets?: { expr?: string }[];
  panels?: Panel[];
}

interface Dashboard {
  uid: string;
  panels: Panel[];
  templating: { list: { query?: string | { query?: string } }[] };
}

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;

function allPanels(panels: Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
}

/** Every PromQL expression of the dashboard: panel targets and template variable queries. */
function expressions(): string[] {
  const targets = allPanels(dashboard.panels).flatMap((p) => (p.targets ?? []).map((t) => t.expr));
  const variables = dashboard.templating.list.map((v) =>
    typeof v.query === 'string' ? undefined : v.query?.query,
  );
  return [...targets, ...variables].filter((e): e is string => typeof e === 'string');
}

/** The metric names in an expression (label values in quotes are not names). */
function metricNames(expr: string): string[] {
  const unquoted = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  return [...unquoted.matchAll(/\bnarwhal_[a-zA-Z0-9_]+/g)].map((m) => m[0]);
}

/** What narwhal exports with metrics on, a size limit and a lock backend that can degrade. */
async function exported(): Promise<Map<string, string>> {
  const config = buildConfig(
    {
      'cache-upstream-url': 'https://cache.example.org',
      'prometheus-enabled': 'true',
      'cache-max-size': '1G',
    },
    '/tmp',
  );
  const metrics = new MetricsService(config);
  metrics.watchDegradedLockOperations(() => 0);
  const all = await metrics.registry.getMetricsAsJSON();
  return new Map(all.map((m) => [m.name, String(m.type)]));
}

/** The exported metric a series name belongs to, or undefined. */
function resolve(name: string, registry: Map<string, string>): string | undefined {
  if (registry.has(name)) return name;
  const suffix = /_(bucket|sum|count)$/.exec(name);
  if (!suffix) return undefined;
  const base = name.slice(0, -suffix[0].length);
  const type = registry.get(base);
  if (type === 'histogram') return base;
  if (type === 'summary' && suffix[1] !== 'bucket') return base;
  return undefined;
}

describe('the Grafana dashboard (docker/monitoring/grafana/dashboards/narwhal.json)', () => {
  it('queries only metrics that narwhal exports', async () => {
    const registry = await exported();
    const unknown = expressions()
      .flatMap(metricNames)
      .filter((n) => resolve(n, registry) === undefined);
    expect(unknown).toEqual([]);
  });

  it('shows requests, latency, hit ratio, bytes, upstreams, downloads, storage, LRU, locks and degraded mode', async () => {
    const registry = await exported();
    const used = new Set(
      expressions()
        .flatMap(metricNames)
        .map((n) => resolve(n, registry)),
    );
    for (const wanted of [
      'narwhal_http_requests_total',
      'narwhal_http_request_duration_seconds',
      'narwhal_narinfo_requests_total',
      'narwhal_nar_requests_total',
      'narwhal_served_bytes_total',
      'narwhal_upstream_bytes_total',
      'narwhal_upstream_requests_total',
      'narwhal_upstream_errors_total',
      'narwhal_upstream_request_duration_seconds',
      'narwhal_downloads_in_flight',
      'narwhal_storage_bytes',
      'narwhal_storage_max_bytes',
      'narwhal_lru_evicted_total',
      'narwhal_lock_wait_seconds',
      'narwhal_lock_degraded_operations_total',
    ]) {
      expect({ wanted, used: used.has(wanted) }).toEqual({ wanted, used: true });
    }
  });

  it('is well formed: unique panel ids, a target on every graph', () => {
    const panels = allPanels(dashboard.panels);
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels.filter((x) => x.type !== 'row')) {
      expect({ title: p.title, targets: (p.targets ?? []).length > 0 }).toEqual({
        title: p.title,
        targets: true,
      });
    }
    expect(dashboard.uid).toBe('narwhal');
  });

  it('finds metric names in PromQL, not in label values, and knows histogram series', async () => {
    expect(
      metricNames(
        'sum by (le) (rate(narwhal_a_bucket{route="narwhal_not_a_metric"}[5m])) / narwhal_b',
      ),
    ).toEqual(['narwhal_a_bucket', 'narwhal_b']);
    const registry = await exported();
    expect(resolve('narwhal_lock_wait_seconds_bucket', registry)).toBe('narwhal_lock_wait_seconds');
    expect(resolve('narwhal_lru_evicted_total_count', registry)).toBeUndefined();
    expect(resolve('narwhal_no_such_metric', registry)).toBeUndefined();
  });
});
