import { Transform, type Readable } from 'node:stream';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { metricName as name } from './metric-prefix';
import { PendingCounts, PendingObservations } from './pending-observations';

export type NarInfoResult = 'hit' | 'miss' | 'not_found';
/** hit: from storage; download: started this instance's download; joined: attached to one already running; peer: another instance's. */
export type NarResult = 'hit' | 'download' | 'joined' | 'peer';
export type ServedSource = 'storage' | 'download' | 'peer';

/**
 * What clients ask and get: HTTP requests by route, narinfo and NAR lookups by result, the NAR bytes
 * served, the narinfo negative cache and the NARs remembered in memory, registered in `registry`.
 */
export class RequestMetrics {
  readonly httpRequests: Counter<'route' | 'method' | 'status'>;
  readonly httpDuration: Histogram<'route' | 'method'>;
  readonly narInfoRequests: Counter<'result'>;
  readonly narRequests: Counter<'result'>;
  readonly servedBytes: Counter<'source'>;
  readonly negativeHits: Counter;
  readonly negativeEntries: Gauge;
  readonly memoryEntries: Gauge;
  readonly memoryBytes: Gauge;
  /** The per-request HTTP metrics, added up between scrapes (see httpResponse). */
  private readonly http: PendingObservations<'route' | 'method' | 'status', 'route' | 'method'>;
  /** Lookups by result and bytes served by source, added up between scrapes. */
  private readonly narInfoResults: PendingCounts<NarInfoResult>;
  private readonly narResults: PendingCounts<NarResult>;
  private readonly served: PendingCounts<ServedSource>;
  private negativeSize: () => number = () => 0;
  private narMemory: () => { entries: number; bytes: number } = () => ({ entries: 0, bytes: 0 });

  constructor(registry: Registry) {
    this.httpRequests = new Counter({
      name: name('http_requests_total'),
      help: 'HTTP requests answered, by matched route pattern, method and status code.',
      labelNames: ['route', 'method', 'status'],
      registers: [registry],
      collect: () => this.http.flush(),
    });
    this.httpDuration = new Histogram({
      name: name('http_request_duration_seconds'),
      help: 'Time from request to the last byte of the response (NAR responses include streaming).',
      labelNames: ['route', 'method'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers: [registry],
      collect: () => this.http.flush(),
    });
    this.http = new PendingObservations(this.httpRequests, this.httpDuration);
    this.narInfoRequests = new Counter({
      name: name('narinfo_requests_total'),
      help: 'narinfo lookups (GET and HEAD) by result: hit (stored), miss (fetched from upstream), not_found.',
      labelNames: ['result'],
      registers: [registry],
      collect: () => this.narInfoResults.flush(),
    });
    this.narRequests = new Counter({
      name: name('nar_requests_total'),
      help: "NAR GETs by where the bytes came from: hit (storage), download (started this instance's download), joined (attached to a running download), peer (another instance's download).",
      labelNames: ['result'],
      registers: [registry],
      collect: () => this.narResults.flush(),
    });
    this.servedBytes = new Counter({
      name: name('served_bytes_total'),
      help: 'NAR bytes streamed to clients, by source: storage, download (this instance), peer (another instance).',
      labelNames: ['source'],
      registers: [registry],
      collect: () => this.served.flush(),
    });
    this.negativeHits = new Counter({
      name: name('narinfo_negative_cache_hits_total'),
      help: 'narinfo lookups answered 404 from the negative cache (no upstream asked).',
      registers: [registry],
    });
    this.negativeEntries = new Gauge({
      name: name('narinfo_negative_cache_entries'),
      help: 'Hashes remembered as missing from every upstream.',
      registers: [registry],
      collect: () => this.negativeEntries.set(this.negativeSize()),
    });
    this.memoryEntries = new Gauge({
      name: name('nar_memory_entries'),
      help: 'Stored NARs this instance remembers (served lately: a hit asks neither the database nor, for small ones, the disk).',
      registers: [registry],
      collect: () => this.memoryEntries.set(this.narMemory().entries),
    });
    this.memoryBytes = new Gauge({
      name: name('nar_memory_bytes'),
      help: 'Bytes of small stored NARs held in memory (at most 32 MiB).',
      registers: [registry],
      collect: () => this.memoryBytes.set(this.narMemory().bytes),
    });

    // Known label values start at 0, so that rates and absent-series alerts work from the start.
    const narInfoResult = (r: NarInfoResult) => this.narInfoRequests.labels(r);
    const narInfoSeries = {
      hit: narInfoResult('hit'),
      miss: narInfoResult('miss'),
      not_found: narInfoResult('not_found'),
    };
    const narResult = (r: NarResult) => this.narRequests.labels(r);
    const narSeries = {
      hit: narResult('hit'),
      download: narResult('download'),
      joined: narResult('joined'),
      peer: narResult('peer'),
    };
    const servedSource = (s: ServedSource) => this.servedBytes.labels(s);
    const servedSeries = {
      storage: servedSource('storage'),
      download: servedSource('download'),
      peer: servedSource('peer'),
    };
    this.narInfoResults = new PendingCounts(narInfoSeries);
    this.narResults = new PendingCounts(narSeries);
    this.served = new PendingCounts(servedSeries);
    this.negativeHits.inc(0);
  }

  /** One answered HTTP request; `route` is the matched pattern (never the raw URL). */
  httpResponse(route: string, method: string, status: number, seconds: number): void {
    // Once per request: added up here, handed to prom-client when it is scraped.
    const key = `${method} ${status} ${route}`;
    if (this.http.observe(key, seconds)) return;
    this.http.add(key, { route, method, status: String(status) }, { route, method });
    this.http.observe(key, seconds);
  }

  narInfoRequest(result: NarInfoResult): void {
    this.narInfoResults.add(result);
  }

  narRequest(result: NarResult): void {
    this.narResults.add(result);
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

  /** NAR bytes sent without a stream (from memory, or a stored file): counted as served. */
  countServedBytes<T extends Buffer | number>(source: ServedSource, body: T): T {
    this.served.add(source, typeof body === 'number' ? body : body.length);
    return body;
  }

  /**
   * `body` as it streams to a client, counting its bytes; errors and early closes pass through in
   * both directions (a broken source breaks the client's stream, a gone client closes the source).
   */
  countServed(source: ServedSource, body: Readable): Readable {
    const served = this.served;
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        served.add(source, chunk.length);
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
}
