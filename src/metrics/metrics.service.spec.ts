import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { DataSource } from 'typeorm';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { buildConfig, type RawSettings } from '../config/app-config';
import { openDataSource } from '../database/data-source';
import { NarFileRepository } from '../database/nar-file.repository';
import { LocalLocker } from '../locking/local/local-locker';
import { MetricsService, upstreamErrorReason } from './metrics.service';

const UPSTREAM = 'https://cache.example.org';

let dir: string;
let ds: DataSource;
let files: NarFileRepository;
let locker: LocalLocker;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'narwhal-metrics-'));
  ds = await openDataSource({ kind: 'sqlite', path: join(dir, 'narwhal.sqlite') });
  files = new NarFileRepository(ds);
  locker = new LocalLocker();
});

afterEach(async () => {
  await locker.close();
  if (ds?.isInitialized) await ds.destroy();
  await rm(dir, { recursive: true, force: true });
});

/** A MetricsService whose stored-size gauge reads the test database, as the LRU module wires it. */
function metrics(settings: RawSettings = {}): MetricsService {
  const config = buildConfig({ 'cache-upstream-url': UPSTREAM, ...settings }, dir);
  const m = new MetricsService(config);
  m.watchStoredBytes(() => files.storedBytes());
  return m;
}

/** The sample of `name` with exactly `labels` (undefined when there is none), after collecting. */
async function value(
  m: MetricsService,
  name: string,
  labels: Record<string, string> = {},
): Promise<number | undefined> {
  const want = Object.entries(labels);
  for (const metric of await m.registry.getMetricsAsJSON()) {
    for (const v of metric.values as { value: number; labels: object; metricName?: string }[]) {
      const have = v.labels as Record<string, string | number>;
      if ((v.metricName ?? metric.name) !== name) continue;
      if (Object.keys(have).length !== want.length) continue;
      if (want.every(([k, x]) => String(have[k]) === x)) return v.value;
    }
  }
  return undefined;
}

async function storeNar(key: string, size: number): Promise<void> {
  await files.recordStored(key, `${UPSTREAM}/nar/${key}`, { compression: 'none' }, size);
}

describe('MetricsService', () => {
  it('starts every known result at 0 and counts requests by result', async () => {
    const m = metrics();
    expect(await value(m, 'narwhal_narinfo_requests_total', { result: 'miss' })).toBe(0);
    expect(await value(m, 'narwhal_nar_requests_total', { result: 'joined' })).toBe(0);
    expect(
      await value(m, 'narwhal_upstream_requests_total', {
        upstream: UPSTREAM,
        kind: 'head',
        outcome: 'error',
      }),
    ).toBe(0);
    m.narInfoRequest('miss');
    m.narInfoRequest('hit');
    m.narInfoRequest('hit');
    m.narRequest('joined');
    expect(await value(m, 'narwhal_narinfo_requests_total', { result: 'hit' })).toBe(2);
    expect(await value(m, 'narwhal_narinfo_requests_total', { result: 'miss' })).toBe(1);
    expect(await value(m, 'narwhal_nar_requests_total', { result: 'joined' })).toBe(1);
  });

  it('collects process metrics under the narwhal_ prefix only when /metrics is enabled', async () => {
    expect(await value(metrics(), 'narwhal_process_cpu_user_seconds_total')).toBeUndefined();
    const on = metrics({ 'prometheus-enabled': 'true' });
    expect(await value(on, 'narwhal_process_cpu_user_seconds_total')).toBeGreaterThanOrEqual(0);
    expect(await on.render()).toContain('# TYPE narwhal_nodejs_heap_size_used_bytes gauge');
    expect(on.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
  });

  it('records HTTP responses by route, method and status', async () => {
    const m = metrics();
    m.httpResponse('/nar/:name', 'GET', 200, 0.5);
    m.httpResponse('/nar/:name', 'GET', 200, 1.5);
    m.httpResponse('/nar/:name', 'GET', 404, 0.01);
    const labels = { route: '/nar/:name', method: 'GET' };
    expect(await value(m, 'narwhal_http_requests_total', { ...labels, status: '200' })).toBe(2);
    expect(await value(m, 'narwhal_http_requests_total', { ...labels, status: '404' })).toBe(1);
    expect(await value(m, 'narwhal_http_request_duration_seconds_count', labels)).toBe(3);
    expect(await value(m, 'narwhal_http_request_duration_seconds_sum', labels)).toBeCloseTo(2.01);
  });

  describe('upstream requests', () => {
    const labels = (kind: string, outcome: string) => ({ upstream: UPSTREAM, kind, outcome });

    it('sorts answers into ok, not_found and error, counting errors by status class', async () => {
      const m = metrics();
      m.upstreamRequest(UPSTREAM, 'narinfo').answered(200);
      m.upstreamRequest(UPSTREAM, 'narinfo').answered(404);
      m.upstreamRequest(UPSTREAM, 'narinfo').answered(410);
      m.upstreamRequest(UPSTREAM, 'nar').answered(503);
      m.upstreamRequest(UPSTREAM, 'nar').answered(403);
      m.upstreamRequest(UPSTREAM, 'head').answered(304);
      const requests = 'narwhal_upstream_requests_total';
      expect(await value(m, requests, labels('narinfo', 'ok'))).toBe(1);
      expect(await value(m, requests, labels('narinfo', 'not_found'))).toBe(2);
      expect(await value(m, requests, labels('nar', 'error'))).toBe(2);
      expect(await value(m, requests, labels('head', 'error'))).toBe(1);
      const errors = (reason: string) =>
        value(m, 'narwhal_upstream_errors_total', { upstream: UPSTREAM, reason });
      expect(await errors('http_5xx')).toBe(1);
      expect(await errors('http_4xx')).toBe(1);
      expect(await errors('http_other')).toBe(1);
      const duration = 'narwhal_upstream_request_duration_seconds_count';
      expect(await value(m, duration, { upstream: UPSTREAM, kind: 'narinfo' })).toBe(3);
    });

    it('counts a failed request as an error with its reason, and rejected answers as invalid', async () => {
      const m = metrics();
      const timeout = Object.assign(new Error('Headers Timeout Error'), {
        code: 'UND_ERR_HEADERS_TIMEOUT',
      });
      m.upstreamRequest(UPSTREAM, 'nar').failed(timeout);
      m.upstreamInvalid(UPSTREAM);
      expect(await value(m, 'narwhal_upstream_requests_total', labels('nar', 'error'))).toBe(1);
      const errors = (reason: string) =>
        value(m, 'narwhal_upstream_errors_total', { upstream: UPSTREAM, reason });
      expect(await errors('timeout')).toBe(1);
      expect(await errors('invalid')).toBe(1);
    });

    it('classifies errors by their code', () => {
      const coded = (code: string) => Object.assign(new Error(code), { code });
      expect(upstreamErrorReason(coded('UND_ERR_CONNECT_TIMEOUT'))).toBe('timeout');
      expect(upstreamErrorReason(coded('UND_ERR_BODY_TIMEOUT'))).toBe('timeout');
      expect(upstreamErrorReason(new DOMException('deadline', 'TimeoutError'))).toBe('timeout');
      expect(upstreamErrorReason(coded('ECONNREFUSED'))).toBe('connection');
      expect(upstreamErrorReason(coded('ENOTFOUND'))).toBe('connection');
      expect(upstreamErrorReason(coded('UND_ERR_SOCKET'))).toBe('connection');
      expect(upstreamErrorReason(new AggregateError([coded('ECONNREFUSED')]))).toBe('connection');
      expect(upstreamErrorReason(coded('UND_ERR_REQ_CONTENT_LENGTH_MISMATCH'))).toBe('other');
      expect(upstreamErrorReason(new Error('no code'))).toBe('other');
      expect(upstreamErrorReason('a string')).toBe('other');
    });

    it('counts NAR body bytes as they are consumed, and a body that breaks as an error', async () => {
      const m = metrics();
      const bytes = () => value(m, 'narwhal_upstream_bytes_total', { upstream: UPSTREAM });
      const seen: number[] = [];
      for await (const c of m.countUpstreamBody(UPSTREAM, Readable.from(chunks(3, 1000)))) {
        seen.push(c.length);
        expect(await bytes()).toBe(seen.length * 1000);
      }
      expect(seen).toEqual([1000, 1000, 1000]);

      const broken = new Readable({ read() {} });
      broken.push(Buffer.alloc(10));
      setImmediate(() =>
        broken.destroy(Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' })),
      );
      await expect(drain(m.countUpstreamBody(UPSTREAM, broken))).rejects.toThrow(
        'other side closed',
      );
      expect(await bytes()).toBe(3010);
      expect(
        await value(m, 'narwhal_upstream_errors_total', {
          upstream: UPSTREAM,
          reason: 'connection',
        }),
      ).toBe(1);
    });

    it('closes the upstream body when its consumer stops early, without counting an error', async () => {
      const m = metrics();
      const body = Readable.from(chunks(10, 100));
      for await (const c of m.countUpstreamBody(UPSTREAM, body)) {
        expect(c.length).toBe(100);
        break;
      }
      expect(body.destroyed).toBe(true);
      expect(await value(m, 'narwhal_upstream_bytes_total', { upstream: UPSTREAM })).toBe(100);
      expect(
        await value(m, 'narwhal_upstream_errors_total', { upstream: UPSTREAM, reason: 'other' }),
      ).toBeUndefined();
    });
  });

  describe('served bytes', () => {
    it('passes the body through unchanged while counting it by source', async () => {
      const m = metrics();
      const out = m.countServed('storage', Readable.from(chunks(4, 256)));
      const got = Buffer.concat(await drain(out));
      expect(got.equals(Buffer.concat(chunks(4, 256)))).toBe(true);
      expect(await value(m, 'narwhal_served_bytes_total', { source: 'storage' })).toBe(1024);
      expect(await value(m, 'narwhal_served_bytes_total', { source: 'download' })).toBe(0);
    });

    it('breaks the client stream when the source fails (no clean end for bad bytes)', async () => {
      const m = metrics();
      const source = new PassThrough();
      const out = m.countServed('download', source);
      const received: Buffer[] = [];
      out.on('data', (c: Buffer) => received.push(c));
      source.write(Buffer.alloc(100));
      source.destroy(new Error('download failed: FileHash mismatch'));
      await expect(finished(out)).rejects.toThrow('FileHash mismatch');
      expect(out.readableEnded).toBe(false);
    });

    it('breaks the client stream when the source is destroyed without an error before its end', async () => {
      const m = metrics();
      const source = new PassThrough();
      const out = m.countServed('download', source);
      out.resume();
      source.write(Buffer.alloc(10));
      source.destroy();
      await expect(finished(out)).rejects.toThrow(/closed before its end/);
      expect(out.readableEnded).toBe(false);
    });

    it('ends the client stream cleanly once a source that ended closes', async () => {
      const m = metrics();
      const source = new PassThrough();
      const out = m.countServed('download', source);
      const got = drain(out);
      source.end(Buffer.alloc(10));
      expect(Buffer.concat(await got)).toHaveLength(10);
      await finished(out);
      expect(out.readableEnded).toBe(true);
      expect(out.destroyed).toBe(true);
    });

    it('closes the source when the client goes away', async () => {
      const m = metrics();
      const source = new PassThrough();
      const out = m.countServed('peer', source);
      out.destroy();
      await expect(finished(source)).rejects.toThrow();
      expect(source.destroyed).toBe(true);
    });
  });

  describe('gauges read at scrape time', () => {
    it('reports in-flight downloads and their readers from the watched source', async () => {
      const m = metrics();
      expect(await value(m, 'narwhal_downloads_in_flight')).toBe(0);
      const running = new Map([
        ['a', { readerCount: 3 }],
        ['b', { readerCount: 1 }],
      ]);
      m.watchDownloads(() => running.values());
      expect(await value(m, 'narwhal_downloads_in_flight')).toBe(2);
      expect(await value(m, 'narwhal_download_clients')).toBe(4);
      running.delete('a');
      expect(await value(m, 'narwhal_downloads_in_flight')).toBe(1);
      expect(await value(m, 'narwhal_download_clients')).toBe(1);
    });

    it('reads the stored size from the database, cached, and again once a NAR is stored or evicted', async () => {
      const m = metrics();
      const stored = () => value(m, 'narwhal_storage_bytes');
      expect(await stored()).toBe(0);
      await storeNar('a.nar', 1000);
      expect(await stored()).toBe(0); // cached for a few seconds
      m.downloadFinished('stored');
      expect(await stored()).toBe(1000);
      await files.deleteWithNarInfos('a.nar');
      m.lruEvict(1000);
      expect(await stored()).toBe(0);
      expect(await value(m, 'narwhal_downloads_total', { outcome: 'stored' })).toBe(1);
      expect(await value(m, 'narwhal_lru_evicted_total')).toBe(1);
      expect(await value(m, 'narwhal_lru_evicted_bytes_total')).toBe(1000);
    });

    it('keeps the last stored size when the database cannot be read', async () => {
      const m = metrics();
      await storeNar('a.nar', 42);
      expect(await value(m, 'narwhal_storage_bytes')).toBe(42);
      await ds.destroy();
      m.downloadFinished('stored');
      expect(await value(m, 'narwhal_storage_bytes')).toBe(42);
    });

    it('shows --cache-max-size, and no storage_max_bytes without it', async () => {
      expect(await value(metrics({ 'cache-max-size': '10G' }), 'narwhal_storage_max_bytes')).toBe(
        10 * 1024 ** 3,
      );
      expect(await value(metrics(), 'narwhal_storage_max_bytes')).toBeUndefined();
    });

    it("counts degraded lock operations when the locker reports them, and has no series when it can't", async () => {
      expect(await value(metrics(), 'narwhal_lock_degraded_operations_total')).toBeUndefined();
      const degradable = { degradedOperations: 0 };
      const m = metrics();
      m.watchDegradedLockOperations(() => degradable.degradedOperations);
      expect(await value(m, 'narwhal_lock_degraded_operations_total')).toBe(0);
      degradable.degradedOperations = 5;
      expect(await value(m, 'narwhal_lock_degraded_operations_total')).toBe(5);
      degradable.degradedOperations = 7;
      expect(await value(m, 'narwhal_lock_degraded_operations_total')).toBe(7);
    });
  });

  it('sums its counters for the status page', async () => {
    const m = metrics();
    m.narInfoRequest('hit');
    m.narInfoRequest('hit');
    m.narInfoRequest('not_found');
    m.narRequest('joined');
    m.upstreamRequest(UPSTREAM, 'narinfo').answered(200);
    m.upstreamRequest(UPSTREAM, 'nar').answered(503);
    m.upstreamInvalid(UPSTREAM);
    m.upstreamRequest('other', 'nar').answered(200);
    for await (const _ of m.countUpstreamBody(UPSTREAM, Readable.from(chunks(2, 100)))) void _;
    await drain(m.countServed('storage', Readable.from(chunks(3, 10))));
    m.downloadFinished('discarded');
    const t = await m.counterTotals();
    expect(t.narinfo).toEqual({ hit: 2, miss: 0, not_found: 1 });
    expect(t.nar).toEqual({ hit: 0, download: 0, joined: 1, peer: 0 });
    expect(t.servedBytes).toEqual({ storage: 30, download: 0, peer: 0 });
    expect(t.upstreamBytes).toBe(200);
    expect(t.downloads).toEqual({ stored: 0, discarded: 1 });
    expect(t.upstreams[UPSTREAM]).toMatchObject({ requests: 2, errors: 2 });
    expect(t.upstreams[UPSTREAM].seconds).toBeGreaterThanOrEqual(0);
    expect(t.upstreams.other).toMatchObject({ requests: 1, errors: 0 });
  });

  it('gives the stored size to the status page, and the last one read when the database fails', async () => {
    const m = metrics();
    await storeNar('a.nar', 77);
    expect(await m.storedBytes()).toBe(77);
    await ds.destroy();
    m.downloadFinished('stored');
    expect(await m.storedBytes()).toBe(77);
  });

  it('times lock acquisitions by kind and counts LRU runs', async () => {
    const m = metrics();
    const lease = await m.timeLock('nar', () => locker.tryAcquire('nar:x', 60_000));
    expect(lease).not.toBeNull();
    expect(await m.timeLock('nar', () => locker.tryAcquire('nar:x', 60_000))).toBeNull();
    await lease?.release();
    const held = m.lockTimer('narinfo');
    held();
    expect(await value(m, 'narwhal_lock_wait_seconds_count', { kind: 'nar' })).toBe(2);
    expect(await value(m, 'narwhal_lock_wait_seconds_count', { kind: 'narinfo' })).toBe(1);
    m.lruRun('ran');
    m.lruRun('skipped');
    m.lruRun('skipped');
    expect(await value(m, 'narwhal_lru_runs_total', { result: 'ran' })).toBe(1);
    expect(await value(m, 'narwhal_lru_runs_total', { result: 'skipped' })).toBe(2);
  });
});

function chunks(n: number, size: number): Buffer[] {
  return Array.from({ length: n }, (_, i) => Buffer.alloc(size, i + 1));
}

async function drain(body: AsyncIterable<Buffer>): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const c of body) out.push(c);
  return out;
}
