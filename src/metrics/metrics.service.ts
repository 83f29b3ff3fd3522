import { Inject, Injectable } from '@nestjs/common';
import type { Readable } from 'node:stream';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import {
  ActivityMetrics,
  type AuthRefusal,
  type DocumentKind,
  type DocumentResult,
  type PrefetchResult,
  type UploadKind,
  type UploadResult,
} from './activity-metrics';
import { readCounterTotals, type CounterTotals } from './counter-totals';
import { DownloadMetrics, type LockKind } from './download-metrics';
import { METRIC_PREFIX } from './metric-prefix';
import {
  RequestMetrics,
  type NarInfoResult,
  type NarResult,
  type ServedSource,
} from './request-metrics';
import { StorageMetrics } from './storage-metrics';
import {
  UpstreamMetrics,
  type CIRCUIT_STATE_VALUES,
  type UpstreamKind,
  type UpstreamTiming,
} from './upstream-metrics';

export type {
  AuthRefusal,
  DocumentKind,
  DocumentResult,
  PrefetchResult,
  UploadKind,
  UploadResult,
} from './activity-metrics';
export type { CounterTotals } from './counter-totals';
export type { LockKind } from './download-metrics';
export { METRIC_PREFIX } from './metric-prefix';
export type { NarInfoResult, NarResult, ServedSource } from './request-metrics';
export {
  CIRCUIT_STATE_VALUES,
  OTHER_UPSTREAM,
  upstreamErrorReason,
  type UpstreamErrorReason,
  type UpstreamKind,
  type UpstreamOutcome,
  type UpstreamTiming,
} from './upstream-metrics';

/**
 * narwhal's Prometheus metrics, in a registry of their own. The flows report what happens here
 * whether or not `/metrics` is enabled (counting is cheap); only with --prometheus-enabled are the
 * process metrics collected and the registry served. Each flow's metrics live in a class of their
 * own (requests, upstreams, downloads and locks, storage, the other activity) that this one makes
 * and hands the calls to.
 */
@Injectable()
export class MetricsService {
  readonly registry = new Registry();

  private readonly request: RequestMetrics;
  private readonly upstream: UpstreamMetrics;
  private readonly download: DownloadMetrics;
  private readonly storage: StorageMetrics;
  private readonly activity: ActivityMetrics;

  constructor(@Inject(APP_CONFIG) config: AppConfig) {
    if (config.metrics.enabled) {
      collectDefaultMetrics({ register: this.registry, prefix: METRIC_PREFIX });
    }
    // Each flow registers its metrics in this registry as it makes them.
    this.request = new RequestMetrics(this.registry);
    this.upstream = new UpstreamMetrics(
      config.upstreams.map((u) => u.url),
      this.registry,
    );
    this.download = new DownloadMetrics(this.registry);
    this.storage = new StorageMetrics(config.lru.maxSize, this.registry);
    this.activity = new ActivityMetrics(this.registry);
  }

  /**
   * The counters' values, read from the registry (a walk over a few dozen series; never on a
   * request path — the status page reads it when sampling and when its JSON is asked for).
   */
  counterTotals(): Promise<CounterTotals> {
    return readCounterTotals(this.request, this.upstream, this.download);
  }

  /** The registry in the Prometheus text format. */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  // Requests: HTTP, narinfo and NAR lookups, the bytes served, negative cache, NARs in memory.

  /** One answered HTTP request; `route` is the matched pattern (never the raw URL). */
  httpResponse(route: string, method: string, status: number, seconds: number): void {
    this.request.httpResponse(route, method, status, seconds);
  }

  narInfoRequest(result: NarInfoResult): void {
    this.request.narInfoRequest(result);
  }

  narRequest(result: NarResult): void {
    this.request.narRequest(result);
  }

  /** A narinfo miss answered from the negative cache. */
  negativeCacheHit(): void {
    this.request.negativeCacheHit();
  }

  /** Where the negative-cache size gauge reads from. */
  watchNegativeCache(size: () => number): void {
    this.request.watchNegativeCache(size);
  }

  /** Where the NAR memory gauges read from (see RememberedNars). */
  watchNarMemory(source: () => { entries: number; bytes: number }): void {
    this.request.watchNarMemory(source);
  }

  /** NAR bytes sent without a stream (from memory, or a stored file): counted as served. */
  countServedBytes<T extends Buffer | number>(source: ServedSource, body: T): T {
    return this.request.countServedBytes(source, body);
  }

  /** `body` as it streams to a client, counting its bytes (see RequestMetrics.countServed). */
  countServed(source: ServedSource, body: Readable): Readable {
    return this.request.countServed(source, body);
  }

  // Upstreams: requests, failures, bytes received, circuits.

  /** Starts timing one upstream request; call `answered` when headers arrive, `failed` otherwise. */
  upstreamRequest(upstream: string, kind: UpstreamKind): UpstreamTiming {
    return this.upstream.upstreamRequest(upstream, kind);
  }

  /** A request to an upstream was not sent: its circuit is open. */
  upstreamSkipped(upstream: string): void {
    this.upstream.upstreamSkipped(upstream);
  }

  /** Where the circuit-state gauge reads from at scrape time (the upstreams' breakers). */
  watchCircuits(
    source: () => Iterable<{ url: string; state: keyof typeof CIRCUIT_STATE_VALUES }>,
  ): void {
    this.upstream.watchCircuits(source);
  }

  /** An upstream request or body broke (network, timeout). */
  upstreamFailed(upstream: string, error: unknown): void {
    this.upstream.upstreamFailed(upstream, error);
  }

  /** An upstream answered with something narwhal rejects (malformed, unsigned, too large). */
  upstreamInvalid(upstream: string): void {
    this.upstream.upstreamInvalid(upstream);
  }

  /**
   * A NAR body from an upstream that counts its bytes as they are consumed and counts a transport
   * error if it breaks. Ending the iteration early still closes the underlying body.
   */
  countUpstreamBody(upstream: string, body: AsyncIterable<Buffer>): AsyncIterable<Buffer> {
    return this.upstream.countUpstreamBody(upstream, body);
  }

  // Downloads and locks.

  /** Where the download gauges read from at scrape time (the NAR flow's running downloads). */
  watchDownloads(source: () => Iterable<{ readerCount: number }>): void {
    this.download.watchDownloads(source);
  }

  downloadFinished(outcome: 'stored' | 'discarded'): void {
    this.download.downloadFinished(outcome);
    if (outcome === 'stored') this.storage.storedSizeChanged();
  }

  clientDropped(reason: 'stalled'): void {
    this.download.clientDropped(reason);
  }

  /** Runs `acquire` (a lock acquisition) and records how long it took. */
  timeLock<T>(kind: LockKind, acquire: () => Promise<T>): Promise<T> {
    return this.download.timeLock(kind, acquire);
  }

  /** Starts timing a lock wait; call the result once the lock is held. */
  lockTimer(kind: LockKind): () => void {
    return this.download.lockTimer(kind);
  }

  lockTakeover(kind: LockKind): void {
    this.download.lockTakeover(kind);
  }

  lockLost(kind: LockKind): void {
    this.download.lockLost(kind);
  }

  /**
   * A lock backend that can fall back to in-process locks reports here how many operations it served
   * that way so far; without one, the series does not exist.
   */
  watchDegradedLockOperations(count: () => number): void {
    this.download.watchDegradedLockOperations(count);
  }

  // Storage: the LRU, the stored size, the local disks.

  lruRun(result: 'ran' | 'skipped'): void {
    this.storage.lruRun(result);
  }

  lruEvict(bytes: number): void {
    this.storage.lruEvict(bytes);
  }

  /** Where the stored-size gauge reads from (a database query, cached between scrapes). */
  watchStoredBytes(source: () => Promise<number>): void {
    this.storage.watchStoredBytes(source);
  }

  /**
   * Bytes of stored NARs, from the database, cached like the `storage_bytes` gauge (so page views
   * and scrapes together query at most every few seconds); the last value read when the database
   * does not answer, null until it could be read once.
   */
  storedBytes(): Promise<number | null> {
    return this.storage.storedBytes();
  }

  /** Where the disk gauges read from: the last look at the local disks (spool, objects). */
  watchDiskSpace(
    source: () => readonly { area: string; freeBytes: number; totalBytes: number }[],
  ): void {
    this.storage.watchDiskSpace(source);
  }

  // Documents, uploads, access refusals, prefetch.

  documentRequest(kind: DocumentKind, result: DocumentResult): void {
    this.activity.documentRequest(kind, result);
  }

  upload(kind: UploadKind, result: UploadResult): void {
    this.activity.upload(kind, result);
  }

  authRefused(reason: AuthRefusal, permission: string): void {
    this.activity.authRefused(reason, permission);
  }

  prefetch(kind: 'narinfo' | 'nar', result: PrefetchResult): void {
    this.activity.prefetch(kind, result);
  }

  /** Where the prefetch queue gauges read from at scrape time. */
  watchPrefetch(source: () => { queued: number; running: number }): void {
    this.activity.watchPrefetch(source);
  }
}
