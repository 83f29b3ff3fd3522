import { Inject, Injectable, Logger } from '@nestjs/common';
import { performance } from 'node:perf_hooks';
import { Transform, type Readable } from 'node:stream';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { APP_CONFIG, type AppConfig } from '../config/app-config';

export const METRIC_PREFIX = 'narwhal_';

export type NarInfoResult = 'hit' | 'miss' | 'not_found';
/** hit: from storage; download: started this instance's download; joined: attached to one already running; peer: another instance's. */
export type NarResult = 'hit' | 'download' | 'joined' | 'peer';
export type ServedSource = 'storage' | 'download' | 'peer';
export type UpstreamKind = 'narinfo' | 'nar' | 'head' | 'listing' | 'log' | 'realisation';
export type UpstreamOutcome = 'ok' | 'not_found' | 'error' | 'cancelled';
export type DocumentKind = 'listing' | 'log' | 'realisation';
/** hit: stored here; fetched: from an upstream; generated: a listing made from the stored NAR. */
export type DocumentResult = 'hit' | 'fetched' | 'generated' | 'not_found';
/** The circuit breaker states as the gauge reports them. */
export const CIRCUIT_STATE_VALUES = { closed: 0, 'half-open': 1, open: 2 } as const;
const UPSTREAM_KINDS: readonly UpstreamKind[] = [
  'narinfo',
  'nar',
  'head',
  'listing',
  'log',
  'realisation',
];
const UPSTREAM_OUTCOMES: readonly UpstreamOutcome[] = ['ok', 'not_found', 'error', 'cancelled'];
export type UpstreamErrorReason =
  'timeout' | 'connection' | 'http_4xx' | 'http_5xx' | 'http_other' | 'invalid' | 'other';
export type LockKind = 'narinfo' | 'nar' | 'lru';
export type UploadKind = 'nar' | 'narinfo' | 'listing' | 'log' | 'realisation';
/** stored: kept; exists: the same was already here; rejected: refused for what it carries (4xx). */
export type UploadResult = 'stored' | 'exists' | 'rejected';
/**
 * What became of a prefetch: fetched (stored now), skipped (stored, remembered as missing or being
 * fetched already), not_found (no upstream has it), failed, dropped (the queue was full).
 */
export type PrefetchResult = 'fetched' | 'skipped' | 'not_found' | 'failed' | 'dropped';
const PREFETCH_RESULTS: Record<'narinfo' | 'nar', readonly PrefetchResult[]> = {
  narinfo: ['fetched', 'skipped', 'not_found', 'failed', 'dropped'],
  nar: ['fetched', 'skipped', 'failed', 'dropped'],
};
/** Why a request was refused: 401 (no valid token) or 403 (a token without the permission). */
export type AuthRefusal = 'unauthorized' | 'forbidden';

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

/** `upstream` label of a URL that belongs to no configured upstream (an absolute NAR URL elsewhere). */
export const OTHER_UPSTREAM = 'other';

/** One upstream request being timed until its response headers arrive (or it fails). */
export interface UpstreamTiming {
  answered(status: number): void;
  failed(error: unknown): void;
  /** narwhal cancelled the request itself (a hedged lookup no longer needed its answer). */
  cancelled(): void;
}

/** How long the stored size is reused between scrapes (it is a database query). */
const STORAGE_CACHE_MS = 5_000;
/** Upstream answers that mean "not here" rather than "broken". */
const NOT_FOUND_STATUSES = new Set([404, 410]);
const TIMEOUT_CODES = new Set([
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'ETIMEDOUT',
]);
const CONNECTION_CODES = new Set(['UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_ABORTED']);

/**
 * narwhal's Prometheus metrics, in a registry of their own. The flows report what happens here
 * whether or not `/metrics` is enabled (counting is cheap); only with --prometheus-enabled are the
 * process metrics collected and the registry served.
 */
@Injectable()
export class MetricsService {
  private readonly logger = new Logger('metrics');
  readonly registry = new Registry();

  private readonly httpRequests: Counter<'route' | 'method' | 'status'>;
  private readonly httpDuration: Histogram<'route' | 'method'>;
  private readonly narInfoRequests: Counter<'result'>;
  private readonly narRequests: Counter<'result'>;
  /** The labelled series of the per-request counters, looked up once (see httpResponse). */
  private readonly httpSeries = new Map<
    string,
    { requests: Counter.Internal; duration: Histogram.Internal<'route' | 'method'> }
  >();
  private readonly narInfoResults: Record<NarInfoResult, Counter.Internal>;
  private readonly narResults: Record<NarResult, Counter.Internal>;
  private readonly upstreamRequests: Counter<'upstream' | 'kind' | 'outcome'>;
  private readonly upstreamDuration: Histogram<'upstream' | 'kind'>;
  private readonly upstreamBytes: Counter<'upstream'>;
  private readonly upstreamErrors: Counter<'upstream' | 'reason'>;
  private readonly servedBytes: Counter<'source'>;
  private readonly downloads: Counter<'outcome'>;
  private readonly lockWait: Histogram<'kind'>;
  private readonly lruRuns: Counter<'result'>;
  private readonly lruEvicted: Counter;
  private readonly lruEvictedBytes: Counter;
  private readonly upstreamSkips: Counter<'upstream'>;
  private readonly negativeHits: Counter;
  private readonly documentRequests: Counter<'kind' | 'result'>;
  private readonly clientsDropped: Counter<'reason'>;
  private readonly lockTakeovers: Counter<'kind'>;
  private readonly locksLost: Counter<'kind'>;
  private readonly uploads: Counter<'kind' | 'result'>;
  private readonly authRefusals: Counter<'reason' | 'permission'>;
  private readonly prefetches: Counter<'kind' | 'result'>;
  private prefetchSource: () => { queued: number; running: number } = () => ({
    queued: 0,
    running: 0,
  });

  private readonly registers: Registry[];
  private downloadSource: () => Iterable<{ readerCount: number }> = () => [];
  private circuitSource: () => Iterable<{ url: string; state: keyof typeof CIRCUIT_STATE_VALUES }> =
    () => [];
  private negativeSize: () => number = () => 0;
  private narMemory: () => { entries: number; bytes: number } = () => ({ entries: 0, bytes: 0 });
  private storedSource: () => Promise<number> = () => Promise.resolve(0);
  private stored?: { bytes: number; at: number };
  /** The last stored size read, kept when a later read fails. */
  private lastStoredBytes: number | null = null;
  private storedQuery?: Promise<void>;
  /** Bumped whenever the stored size changes here, so that a query begun before is not cached. */
  private storedGeneration = 0;

  constructor(@Inject(APP_CONFIG) config: AppConfig) {
    const registers = [this.registry];
    this.registers = registers;
    if (config.metrics.enabled) {
      collectDefaultMetrics({ register: this.registry, prefix: METRIC_PREFIX });
    }
    const name = (n: string) => METRIC_PREFIX + n;

    this.httpRequests = new Counter({
      name: name('http_requests_total'),
      help: 'HTTP requests answered, by matched route pattern, method and status code.',
      labelNames: ['route', 'method', 'status'],
      registers,
    });
    this.httpDuration = new Histogram({
      name: name('http_request_duration_seconds'),
      help: 'Time from request to the last byte of the response (NAR responses include streaming).',
      labelNames: ['route', 'method'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers,
    });
    this.narInfoRequests = new Counter({
      name: name('narinfo_requests_total'),
      help: 'narinfo lookups (GET and HEAD) by result: hit (stored), miss (fetched from upstream), not_found.',
      labelNames: ['result'],
      registers,
    });
    this.narRequests = new Counter({
      name: name('nar_requests_total'),
      help: "NAR GETs by where the bytes came from: hit (storage), download (started this instance's download), joined (attached to a running download), peer (another instance's download).",
      labelNames: ['result'],
      registers,
    });
    this.upstreamRequests = new Counter({
      name: name('upstream_requests_total'),
      help: 'Requests to upstream caches by upstream base URL, kind (narinfo, nar, head) and outcome (ok, not_found, error).',
      labelNames: ['upstream', 'kind', 'outcome'],
      registers,
    });
    this.upstreamDuration = new Histogram({
      name: name('upstream_request_duration_seconds'),
      help: 'Time until an upstream sent its response headers (or the request failed).',
      labelNames: ['upstream', 'kind'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.upstreamBytes = new Counter({
      name: name('upstream_bytes_total'),
      help: 'NAR body bytes received from upstream caches.',
      labelNames: ['upstream'],
      registers,
    });
    this.upstreamErrors = new Counter({
      name: name('upstream_errors_total'),
      help: 'Upstream failures by reason: timeout, connection, http_4xx, http_5xx, http_other, invalid (a narinfo rejected as malformed, too large, for another path or not validly signed), other.',
      labelNames: ['upstream', 'reason'],
      registers,
    });
    this.servedBytes = new Counter({
      name: name('served_bytes_total'),
      help: 'NAR bytes streamed to clients, by source: storage, download (this instance), peer (another instance).',
      labelNames: ['source'],
      registers,
    });
    this.downloads = new Counter({
      name: name('downloads_total'),
      help: 'Finished upstream NAR downloads: stored (verified and committed) or discarded (failed, truncated or mismatching).',
      labelNames: ['outcome'],
      registers,
    });
    const inFlight: Gauge = new Gauge({
      name: name('downloads_in_flight'),
      help: 'Upstream NAR downloads this instance is running.',
      registers,
      collect: () => inFlight.set([...this.downloadSource()].length),
    });
    const clients: Gauge = new Gauge({
      name: name('download_clients'),
      help: 'Readers attached to in-flight downloads: clients of this instance, peers streaming from it and, with S3 storage, the upload.',
      registers,
      collect: () => {
        let readers = 0;
        for (const d of this.downloadSource()) readers += d.readerCount;
        clients.set(readers);
      },
    });
    this.lockWait = new Histogram({
      name: name('lock_wait_seconds'),
      help: 'Time to obtain a lock (narinfo: waiting for the lookup lock; nar, lru: one try-lock attempt).',
      labelNames: ['kind'],
      buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60],
      registers,
    });
    this.lruRuns = new Counter({
      name: name('lru_runs_total'),
      help: 'LRU job runs: ran, or skipped because another run held the LRU lock.',
      labelNames: ['result'],
      registers,
    });
    this.lruEvicted = new Counter({
      name: name('lru_evicted_total'),
      help: 'NARs evicted by the LRU job.',
      registers,
    });
    this.lruEvictedBytes = new Counter({
      name: name('lru_evicted_bytes_total'),
      help: 'Bytes of NARs evicted by the LRU job.',
      registers,
    });
    this.upstreamSkips = new Counter({
      name: name('upstream_skipped_total'),
      help: 'Upstream requests not sent because the upstream is backing off after repeated failures (circuit open).',
      labelNames: ['upstream'],
      registers,
    });
    const circuit: Gauge<'upstream'> = new Gauge({
      name: name('upstream_circuit_state'),
      help: "State of an upstream's circuit breaker: 0 closed (asked), 1 half-open (one trial request), 2 open (skipped).",
      labelNames: ['upstream'],
      registers,
      collect: () => {
        for (const c of this.circuitSource())
          circuit.labels(c.url).set(CIRCUIT_STATE_VALUES[c.state]);
      },
    });
    this.negativeHits = new Counter({
      name: name('narinfo_negative_cache_hits_total'),
      help: 'narinfo lookups answered 404 from the negative cache (no upstream asked).',
      registers,
    });
    const negativeEntries: Gauge = new Gauge({
      name: name('narinfo_negative_cache_entries'),
      help: 'Hashes remembered as missing from every upstream.',
      registers,
      collect: () => negativeEntries.set(this.negativeSize()),
    });
    const memoryEntries: Gauge = new Gauge({
      name: name('nar_memory_entries'),
      help: 'Stored NARs this instance remembers (served lately: a hit asks neither the database nor, for small ones, the disk).',
      registers,
      collect: () => memoryEntries.set(this.narMemory().entries),
    });
    const memoryBytes: Gauge = new Gauge({
      name: name('nar_memory_bytes'),
      help: 'Bytes of small stored NARs held in memory (at most 32 MiB).',
      registers,
      collect: () => memoryBytes.set(this.narMemory().bytes),
    });
    this.documentRequests = new Counter({
      name: name('document_requests_total'),
      help: 'Requests for listings (.ls), build logs and realisations, by kind and result: hit (stored), fetched (from an upstream), generated (a listing made from the stored NAR), not_found.',
      labelNames: ['kind', 'result'],
      registers,
    });
    this.lockTakeovers = new Counter({
      name: name('lock_takeovers_total'),
      help: 'Locks taken over from a holder that was gone (its instance killed or restarted), by kind.',
      labelNames: ['kind'],
      registers,
    });
    this.locksLost = new Counter({
      name: name('lock_lost_total'),
      help: 'Leases this instance found lost while still working under them (paused past the lease), by kind: the work may then be done twice.',
      labelNames: ['kind'],
      registers,
    });
    this.clientsDropped = new Counter({
      name: name('clients_dropped_total'),
      help: 'NAR clients disconnected by narwhal, by reason: stalled (took no byte for --cache-client-stall-timeout).',
      labelNames: ['reason'],
      registers,
    });
    this.uploads = new Counter({
      name: name('uploads_total'),
      help: 'Uploads (PUT), by kind and result: stored, exists (the same was already here), rejected (refused for what it carries).',
      labelNames: ['kind', 'result'],
      registers,
    });
    this.authRefusals = new Counter({
      name: name('auth_refused_total'),
      help: 'Requests refused for want of a token, by reason (unauthorized: none or not valid; forbidden: without the permission) and the permission the route needs.',
      labelNames: ['reason', 'permission'],
      registers,
    });
    this.prefetches = new Counter({
      name: name('prefetch_total'),
      help: 'Prefetches (work done before a client asks), by kind (narinfo: a reference of a fetched narinfo; nar: the NAR of a narinfo a client asked for) and result: fetched, skipped (stored, known missing or being fetched already), not_found, failed, dropped (queue full).',
      labelNames: ['kind', 'result'],
      registers,
    });
    const prefetchQueued: Gauge = new Gauge({
      name: name('prefetch_queued'),
      help: 'Prefetches waiting to start.',
      registers,
      collect: () => prefetchQueued.set(this.prefetchSource().queued),
    });
    const prefetchRunning: Gauge = new Gauge({
      name: name('prefetch_running'),
      help: 'Prefetches running now.',
      registers,
      collect: () => prefetchRunning.set(this.prefetchSource().running),
    });
    const storage: Gauge = new Gauge({
      name: name('storage_bytes'),
      help: `Bytes of stored NARs, from the database (re-read at most every ${STORAGE_CACHE_MS / 1000} s).`,
      registers,
      collect: async () => {
        await this.refreshStoredBytes();
        if (this.lastStoredBytes !== null) storage.set(this.lastStoredBytes);
      },
    });
    const maxSize = config.lru.maxSize;
    if (maxSize !== undefined) {
      new Gauge({
        name: name('storage_max_bytes'),
        help: 'Size limit of stored NARs (--cache-max-size).',
        registers,
      }).set(maxSize);
    }

    // Known label values start at 0, so that rates and absent-series alerts work from the start.
    const narInfoResult = (r: NarInfoResult) => this.narInfoRequests.labels(r);
    this.narInfoResults = {
      hit: narInfoResult('hit'),
      miss: narInfoResult('miss'),
      not_found: narInfoResult('not_found'),
    };
    const narResult = (r: NarResult) => this.narRequests.labels(r);
    this.narResults = {
      hit: narResult('hit'),
      download: narResult('download'),
      joined: narResult('joined'),
      peer: narResult('peer'),
    };
    for (const c of [...Object.values(this.narInfoResults), ...Object.values(this.narResults)])
      c.inc(0);
    for (const s of ['storage', 'download', 'peer']) this.servedBytes.labels(s).inc(0);
    for (const o of ['stored', 'discarded']) this.downloads.labels(o).inc(0);
    for (const r of ['ran', 'skipped']) this.lruRuns.labels(r).inc(0);
    this.lruEvicted.inc(0);
    this.clientsDropped.labels('stalled').inc(0);
    for (const k of ['narinfo', 'nar', 'lru']) {
      this.lockTakeovers.labels(k).inc(0);
      this.locksLost.labels(k).inc(0);
    }
    this.lruEvictedBytes.inc(0);
    this.negativeHits.inc(0);
    for (const kind of ['listing', 'log', 'realisation'])
      for (const result of ['hit', 'fetched', 'generated', 'not_found']) {
        if (result !== 'generated' || kind === 'listing')
          this.documentRequests.labels(kind, result).inc(0);
      }
    for (const kind of ['nar', 'narinfo', 'listing', 'log', 'realisation'])
      for (const result of ['stored', 'exists', 'rejected'])
        this.uploads.labels(kind, result).inc(0);
    for (const [kind, results] of Object.entries(PREFETCH_RESULTS))
      for (const result of results) this.prefetches.labels(kind, result).inc(0);
    for (const { url } of config.upstreams) {
      this.upstreamBytes.labels(url).inc(0);
      this.upstreamSkips.labels(url).inc(0);
      for (const kind of UPSTREAM_KINDS)
        for (const outcome of UPSTREAM_OUTCOMES)
          this.upstreamRequests.labels(url, kind, outcome).inc(0);
    }
  }

  /**
   * The counters' values, read from the registry (a walk over a few dozen series; never on a
   * request path — the status page reads it when sampling and when its JSON is asked for).
   */
  async counterTotals(): Promise<CounterTotals> {
    const [narinfo, nar, served, upBytes, downloads, upRequests, upErrors, upDuration] =
      await Promise.all([
        this.narInfoRequests.get(),
        this.narRequests.get(),
        this.servedBytes.get(),
        this.upstreamBytes.get(),
        this.downloads.get(),
        this.upstreamRequests.get(),
        this.upstreamErrors.get(),
        this.upstreamDuration.get(),
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

  /**
   * Bytes of stored NARs, from the database, cached like the `storage_bytes` gauge (so page views
   * and scrapes together query at most every few seconds); the last value read when the database
   * does not answer, null until it could be read once.
   */
  async storedBytes(): Promise<number | null> {
    await this.refreshStoredBytes();
    return this.lastStoredBytes;
  }

  /** The registry in the Prometheus text format. */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** One answered HTTP request; `route` is the matched pattern (never the raw URL). */
  httpResponse(route: string, method: string, status: number, seconds: number): void {
    // Once per request: the labelled children are looked up once per label set, not hashed each time.
    const key = `${method} ${status} ${route}`;
    let series = this.httpSeries.get(key);
    if (!series) {
      series = {
        requests: this.httpRequests.labels(route, method, String(status)),
        duration: this.httpDuration.labels(route, method),
      };
      this.httpSeries.set(key, series);
    }
    series.requests.inc();
    series.duration.observe(seconds);
  }

  narInfoRequest(result: NarInfoResult): void {
    this.narInfoResults[result].inc();
  }

  narRequest(result: NarResult): void {
    this.narResults[result].inc();
  }

  /** Starts timing one upstream request; call `answered` when headers arrive, `failed` otherwise. */
  upstreamRequest(upstream: string, kind: UpstreamKind): UpstreamTiming {
    const began = performance.now();
    const finish = (outcome: UpstreamOutcome) => {
      this.upstreamDuration.labels(upstream, kind).observe((performance.now() - began) / 1000);
      this.upstreamRequests.labels(upstream, kind, outcome).inc();
    };
    return {
      answered: (status) => {
        if (status === 200) return finish('ok');
        if (NOT_FOUND_STATUSES.has(status)) return finish('not_found');
        finish('error');
        this.upstreamErrors.labels(upstream, statusReason(status)).inc();
      },
      failed: (error) => {
        finish('error');
        this.upstreamFailed(upstream, error);
      },
      cancelled: () => finish('cancelled'),
    };
  }

  /** A request to an upstream was not sent: its circuit is open. */
  upstreamSkipped(upstream: string): void {
    this.upstreamSkips.labels(upstream).inc();
  }

  /** Where the circuit-state gauge reads from at scrape time (the upstreams' breakers). */
  watchCircuits(
    source: () => Iterable<{ url: string; state: keyof typeof CIRCUIT_STATE_VALUES }>,
  ): void {
    this.circuitSource = source;
  }

  /** A narinfo miss answered from the negative cache. */
  negativeCacheHit(): void {
    this.negativeHits.inc();
  }

  /** Where the negative-cache size gauge reads from. */
  watchNegativeCache(size: () => number): void {
    this.negativeSize = size;
  }

  /** Where the NAR memory gauges read from (see RememberedNars). */
  watchNarMemory(source: () => { entries: number; bytes: number }): void {
    this.narMemory = source;
  }

  documentRequest(kind: DocumentKind, result: DocumentResult): void {
    this.documentRequests.labels(kind, result).inc();
  }

  upload(kind: UploadKind, result: UploadResult): void {
    this.uploads.labels(kind, result).inc();
  }

  prefetch(kind: 'narinfo' | 'nar', result: PrefetchResult): void {
    this.prefetches.labels(kind, result).inc();
  }

  /** Where the prefetch queue gauges read from at scrape time. */
  watchPrefetch(source: () => { queued: number; running: number }): void {
    this.prefetchSource = source;
  }

  authRefused(reason: AuthRefusal, permission: string): void {
    this.authRefusals.labels(reason, permission).inc();
  }

  /** An upstream request or body broke (network, timeout). */
  upstreamFailed(upstream: string, error: unknown): void {
    this.upstreamErrors.labels(upstream, upstreamErrorReason(error)).inc();
  }

  /** An upstream answered with something narwhal rejects (malformed, unsigned, too large). */
  upstreamInvalid(upstream: string): void {
    this.upstreamErrors.labels(upstream, 'invalid').inc();
  }

  /**
   * A NAR body from an upstream that counts its bytes as they are consumed and counts a transport
   * error if it breaks. Ending the iteration early still closes the underlying body.
   */
  countUpstreamBody(upstream: string, body: AsyncIterable<Buffer>): AsyncIterable<Buffer> {
    const bytes = this.upstreamBytes.labels(upstream);
    const onError = (e: unknown) => this.upstreamFailed(upstream, e);
    return (async function* counted() {
      try {
        for await (const chunk of body) {
          bytes.inc(chunk.length);
          yield chunk;
        }
      } catch (e) {
        onError(e);
        throw e;
      }
    })();
  }

  /**
   * `body` as it streams to a client, counting its bytes; errors and early closes pass through in
   * both directions (a broken source breaks the client's stream, a gone client closes the source).
   */
  /** NAR bytes sent without a stream (from memory, or a stored file): counted as served. */
  countServedBytes<T extends Buffer | number>(source: ServedSource, body: T): T {
    this.servedBytes.labels(source).inc(typeof body === 'number' ? body : body.length);
    return body;
  }

  countServed(source: ServedSource, body: Readable): Readable {
    const bytes = this.servedBytes.labels(source);
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        bytes.inc(chunk.length);
        done(null, chunk);
      },
    });
    // What stream.pipeline would do here, without the AbortController (and the DOMException of
    // its abort) that pipeline makes for every stream it finishes: a failing source breaks the
    // counter (no clean end for bad bytes), a counter closed early (the client left) closes the source.
    body.once('error', (e: Error) => counter.destroy(e));
    body.once('close', () => {
      // Closed before its end without an error (destroyed): still no clean end for the client.
      if (!body.readableEnded && !counter.destroyed) {
        counter.destroy(new Error('the body closed before its end'));
      }
    });
    counter.once('close', () => {
      if (!body.destroyed) body.destroy();
    });
    body.pipe(counter);
    return counter;
  }

  /** Where the download gauges read from at scrape time (the NAR flow's running downloads). */
  watchDownloads(source: () => Iterable<{ readerCount: number }>): void {
    this.downloadSource = source;
  }

  /** Where the disk gauges read from: the last look at the local disks (spool, objects). */
  watchDiskSpace(
    source: () => readonly { area: string; freeBytes: number; totalBytes: number }[],
  ): void {
    const free: Gauge<'area'> = new Gauge({
      name: `${METRIC_PREFIX}disk_free_bytes`,
      help: 'Free bytes on the local disk narwhal writes to, by area: spool (downloads in progress), objects (the filesystem store).',
      labelNames: ['area'],
      registers: this.registers,
      collect: () => {
        for (const d of source()) free.labels(d.area).set(d.freeBytes);
      },
    });
    const total: Gauge<'area'> = new Gauge({
      name: `${METRIC_PREFIX}disk_size_bytes`,
      help: 'Size of the local disk narwhal writes to, by area.',
      labelNames: ['area'],
      registers: this.registers,
      collect: () => {
        for (const d of source()) total.labels(d.area).set(d.totalBytes);
      },
    });
  }

  /** Where the stored-size gauge reads from (a database query, cached between scrapes). */
  watchStoredBytes(source: () => Promise<number>): void {
    this.storedSource = source;
    this.storedSizeChanged();
  }

  /**
   * A lock backend that can fall back to in-process locks reports here how many operations it served
   * that way so far; without one, the series does not exist.
   */
  watchDegradedLockOperations(count: () => number): void {
    let reported = 0;
    const degraded: Counter = new Counter({
      name: `${METRIC_PREFIX}lock_degraded_operations_total`,
      help: 'Lock operations served by in-process locks because Redis was unreachable (degraded mode).',
      registers: this.registers,
      collect: () => {
        const now = count();
        degraded.inc(now - reported);
        reported = now;
      },
    });
  }

  downloadFinished(outcome: 'stored' | 'discarded'): void {
    this.downloads.labels(outcome).inc();
    if (outcome === 'stored') this.storedSizeChanged();
  }

  /** Runs `acquire` (a lock acquisition) and records how long it took. */
  async timeLock<T>(kind: LockKind, acquire: () => Promise<T>): Promise<T> {
    const end = this.lockWait.startTimer({ kind });
    const result = await acquire();
    end();
    return result;
  }

  /** Starts timing a lock wait; call the result once the lock is held. */
  lockTimer(kind: LockKind): () => void {
    const end = this.lockWait.startTimer({ kind });
    return () => void end();
  }

  lockTakeover(kind: LockKind): void {
    this.lockTakeovers.labels(kind).inc();
  }

  lockLost(kind: LockKind): void {
    this.locksLost.labels(kind).inc();
  }

  clientDropped(reason: 'stalled'): void {
    this.clientsDropped.labels(reason).inc();
  }

  lruRun(result: 'ran' | 'skipped'): void {
    this.lruRuns.labels(result).inc();
  }

  lruEvict(bytes: number): void {
    this.lruEvicted.inc();
    this.lruEvictedBytes.inc(bytes);
    this.storedSizeChanged();
  }

  /** The cached stored size is out of date: the next scrape reads it again. */
  private storedSizeChanged(): void {
    this.stored = undefined;
    this.storedGeneration++;
  }

  /**
   * Re-reads the stored size unless the cached value is younger than STORAGE_CACHE_MS and nothing
   * was stored or evicted here since (one query at a time).
   */
  private async refreshStoredBytes(): Promise<void> {
    if (this.stored && Date.now() - this.stored.at < STORAGE_CACHE_MS) return;
    const generation = this.storedGeneration;
    this.storedQuery ??= this.storedSource()
      .then(
        (bytes) => {
          this.lastStoredBytes = bytes;
          if (generation === this.storedGeneration) this.stored = { bytes, at: Date.now() };
        },
        (e: Error) => this.logger.warn(`reading the stored size: ${e.message}`),
      )
      .finally(() => (this.storedQuery = undefined));
    await this.storedQuery;
  }
}

/** Classifies a failed upstream request or body by its error code. */
export function upstreamErrorReason(e: unknown): UpstreamErrorReason {
  const err = e as { code?: unknown; name?: unknown; errors?: unknown[] } | null;
  if (err?.name === 'TimeoutError') return 'timeout'; // an AbortSignal.timeout deadline
  const code =
    typeof err?.code === 'string'
      ? err.code
      : (err?.errors?.[0] as { code?: unknown } | undefined)?.code; // AggregateError (several addresses)
  if (typeof code !== 'string') return 'other';
  if (TIMEOUT_CODES.has(code)) return 'timeout';
  if (CONNECTION_CODES.has(code) || /^E[A-Z]+$/.test(code)) return 'connection';
  return 'other';
}

function statusReason(status: number): UpstreamErrorReason {
  if (status >= 500 && status < 600) return 'http_5xx';
  if (status >= 400 && status < 500) return 'http_4xx';
  return 'http_other';
}
