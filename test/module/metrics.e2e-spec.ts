import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LruService } from '../../src/lru/lru.service';
import { FakeUpstream } from '../support/fake-upstream';
import { startNarwhal, type Narwhal } from '../support/narwhal-app';
import { makeKey, type TestKey } from '../support/signing-keys';
import { makeStorePath, randomHashPart, type StorePathFixture } from '../support/store-paths';
import { eventually } from '../support/wait';
import { parseMetrics, valueOf, type Sample } from '../support/metrics';

/**
 * `GET /metrics` (--prometheus-enabled) through Fastify inject: after a known sequence of requests
 * against real local upstreams, the counters in the Prometheus text format have exactly the values
 * that sequence must produce.
 */

describe('GET /metrics with --prometheus-enabled', () => {
  let key: TestKey;
  let good: FakeUpstream;
  /** Tried first for every narinfo, and always answers 500. */
  let broken: FakeUpstream;
  let nw: Narwhal;
  let f: StorePathFixture;
  let slow: StorePathFixture;

  const get = (url: string) => nw.app.inject({ method: 'GET', url });
  const scrape = async (): Promise<Sample[]> => {
    const res = await get('/metrics');
    expect(res.statusCode).toBe(200);
    return parseMetrics(res.body);
  };

  beforeAll(async () => {
    key = makeKey('up-1');
    good = await FakeUpstream.start();
    broken = await FakeUpstream.start();
    broken.fallback = { kind: 'status', status: 500 };
    nw = await startNarwhal({
      'prometheus-enabled': 'true',
      'cache-upstream-url': [`${broken.url}?priority=10`, `${good.url}?priority=20`],
      'cache-upstream-public-key': [key.publicText],
      'cache-max-size': '1G',
      // The exact NAR counts below are of clients' requests; NAR prefetch would add downloads of its
      // own (its counts are tested in prefetch.e2e-spec.ts).
      'cache-prefetch-nars': 'false',
    });
    f = await makeStorePath([key], { size: 64 * 1024 });
    good.publish(f);
    slow = await makeStorePath([key], { size: 256 * 1024 });
    good.publish(slow);
    // Slow enough that the three concurrent clients below all find the one download running.
    good.set(`/nar/${slow.narName}`, { kind: 'serve', body: slow.file, chunkDelayMs: 100 });
  });

  afterAll(async () => {
    await good?.close();
    await broken?.close();
    await nw?.close();
  });

  it('serves the text format, with the process metrics under the narwhal_ prefix', async () => {
    const res = await get('/metrics');
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const samples = parseMetrics(res.body);
    expect(valueOf(samples, 'narwhal_process_cpu_user_seconds_total')).toBeGreaterThan(0);
    expect(res.body).toContain('# TYPE narwhal_http_requests_total counter');
    expect(res.body).toContain('# TYPE narwhal_lock_wait_seconds histogram');
    expect(valueOf(samples, 'narwhal_storage_max_bytes')).toBe(1024 ** 3);
    // Every known result starts at 0.
    expect(valueOf(samples, 'narwhal_narinfo_requests_total', { result: 'hit' })).toBe(0);
    expect(valueOf(samples, 'narwhal_nar_requests_total', { result: 'peer' })).toBe(0);
  });

  it('counts a narinfo miss and hit, a NAR download and storage hit, joined clients and a 404 exactly', async () => {
    // narinfo: miss (fetched; the broken upstream answers 500 first), then hit.
    expect((await get(`/${f.hash}.narinfo`)).statusCode).toBe(200);
    expect((await get(`/${f.hash}.narinfo`)).statusCode).toBe(200);
    // NAR: downloaded, then from storage.
    const first = await get(`/nar/${f.narName}`);
    expect(first.statusCode).toBe(200);
    expect(first.headers['x-narwhal-source']).toBe('download');
    await eventually(
      async () => valueOf(await scrape(), 'narwhal_downloads_total', { outcome: 'stored' }) === 1,
      10_000,
      'download stored',
    );
    const second = await get(`/nar/${f.narName}`);
    expect(second.statusCode).toBe(200);
    expect(second.headers['x-narwhal-source']).toBe('storage');
    expect(second.rawPayload.equals(f.file)).toBe(true);
    // Three concurrent clients of a cold NAR: one starts the download, two join it.
    expect((await get(`/${slow.hash}.narinfo`)).statusCode).toBe(200);
    const concurrent = await Promise.all([1, 2, 3].map(() => get(`/nar/${slow.narName}`)));
    for (const r of concurrent) expect(r.rawPayload.equals(slow.file)).toBe(true);
    // A hash nobody has.
    expect((await get(`/${randomHashPart()}.narinfo`)).statusCode).toBe(404);

    await eventually(
      async () => valueOf(await scrape(), 'narwhal_downloads_in_flight') === 0,
      10_000,
      'downloads finished',
    );
    const s = await scrape();
    const v = (name: string, labels: Record<string, string> = {}) => valueOf(s, name, labels);

    expect(v('narwhal_narinfo_requests_total', { result: 'miss' })).toBe(2);
    expect(v('narwhal_narinfo_requests_total', { result: 'hit' })).toBe(1);
    expect(v('narwhal_narinfo_requests_total', { result: 'not_found' })).toBe(1);

    expect(v('narwhal_nar_requests_total', { result: 'download' })).toBe(2);
    expect(v('narwhal_nar_requests_total', { result: 'joined' })).toBe(2);
    expect(v('narwhal_nar_requests_total', { result: 'hit' })).toBe(1);
    expect(v('narwhal_nar_requests_total', { result: 'peer' })).toBe(0);
    expect(v('narwhal_downloads_total', { outcome: 'stored' })).toBe(2);
    expect(v('narwhal_downloads_total', { outcome: 'discarded' })).toBe(0);
    expect(v('narwhal_download_clients')).toBe(0);

    const fromDownloads = f.file.length + 3 * slow.file.length;
    expect(v('narwhal_served_bytes_total', { source: 'download' })).toBe(fromDownloads);
    expect(v('narwhal_served_bytes_total', { source: 'storage' })).toBe(f.file.length);
    expect(v('narwhal_served_bytes_total', { source: 'peer' })).toBe(0);

    const up = (upstream: FakeUpstream, kind: string, outcome: string) =>
      v('narwhal_upstream_requests_total', { upstream: upstream.url, kind, outcome });
    // Three lookups reached the upstreams: two found on the good one, one found nowhere.
    expect(up(broken, 'narinfo', 'error')).toBe(3);
    expect(up(good, 'narinfo', 'ok')).toBe(2);
    expect(up(good, 'narinfo', 'not_found')).toBe(1);
    expect(up(good, 'nar', 'ok')).toBe(2);
    expect(up(broken, 'nar', 'ok')).toBe(0);
    expect(v('narwhal_upstream_errors_total', { upstream: broken.url, reason: 'http_5xx' })).toBe(
      3,
    );
    expect(v('narwhal_upstream_errors_total', { upstream: good.url, reason: 'http_5xx' })).toBe(
      undefined,
    );
    expect(v('narwhal_upstream_bytes_total', { upstream: good.url })).toBe(
      f.file.length + slow.file.length,
    );
    expect(
      v('narwhal_upstream_request_duration_seconds_count', { upstream: good.url, kind: 'nar' }),
    ).toBe(2);

    // Lock waits: one per narinfo lookup, one per NAR claim (the joiners shared the first claim).
    expect(v('narwhal_lock_wait_seconds_count', { kind: 'narinfo' })).toBe(3);
    expect(v('narwhal_lock_wait_seconds_count', { kind: 'nar' })).toBe(2);

    expect(v('narwhal_storage_bytes')).toBe(f.file.length + slow.file.length);

    // HTTP by matched route pattern, never by raw URL.
    const http = (route: string, status: string) =>
      v('narwhal_http_requests_total', { route, method: 'GET', status });
    expect(http('/:file', '200')).toBe(3);
    expect(http('/:file', '404')).toBe(1);
    expect(http('/nar/:name', '200')).toBe(5);
    expect(
      v('narwhal_http_request_duration_seconds_count', { route: '/nar/:name', method: 'GET' }),
    ).toBe(5);
    const routes = new Set(
      s.filter((x) => x.name === 'narwhal_http_requests_total').map((x) => x.labels.route),
    );
    for (const r of routes) expect(r).not.toMatch(new RegExp(`${f.hash}|${f.fileHash}`));
  });

  it('counts an LRU run and what it evicted', async () => {
    const report = await nw.app.get(LruService).run(f.file.length + slow.file.length - 1);
    expect(report.evicted).toBe(1);
    const s = await scrape();
    expect(valueOf(s, 'narwhal_lru_runs_total', { result: 'ran' })).toBe(1);
    expect(valueOf(s, 'narwhal_lru_runs_total', { result: 'skipped' })).toBe(0);
    expect(valueOf(s, 'narwhal_lru_evicted_total')).toBe(1);
    expect(valueOf(s, 'narwhal_lru_evicted_bytes_total')).toBe(report.evictedBytes);
    expect(valueOf(s, 'narwhal_lock_wait_seconds_count', { kind: 'lru' })).toBe(1);
  });
});

describe('GET /metrics without --prometheus-enabled', () => {
  let nw: Narwhal;

  beforeAll(async () => {
    nw = await startNarwhal({ 'cache-upstream-url': 'http://127.0.0.1:9' });
  });

  afterAll(async () => {
    await nw?.close();
  });

  it('is a 404', async () => {
    const res = await nw.app.inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(404);
    expect(res.body).not.toContain('narwhal_');
  });
});
