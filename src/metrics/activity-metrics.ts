import { Counter, Gauge, type Registry } from 'prom-client';
import { metricName as name } from './metric-prefix';

export type DocumentKind = 'listing' | 'log' | 'realisation';
/** hit: stored here; fetched: from an upstream; generated: a listing made from the stored NAR. */
export type DocumentResult = 'hit' | 'fetched' | 'generated' | 'not_found';
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

/**
 * The flows besides narinfos and NARs: document requests (listings, build logs, realisations),
 * uploads, requests refused by the access checks, and prefetches with their queue, registered in
 * `registry`.
 */
export class ActivityMetrics {
  readonly documentRequests: Counter<'kind' | 'result'>;
  readonly uploads: Counter<'kind' | 'result'>;
  readonly authRefusals: Counter<'reason' | 'permission'>;
  readonly prefetches: Counter<'kind' | 'result'>;
  readonly prefetchQueued: Gauge;
  readonly prefetchRunning: Gauge;
  private prefetchSource: () => { queued: number; running: number } = () => ({
    queued: 0,
    running: 0,
  });

  constructor(registry: Registry) {
    this.documentRequests = new Counter({
      name: name('document_requests_total'),
      help: 'Requests for listings (.ls), build logs and realisations, by kind and result: hit (stored), fetched (from an upstream), generated (a listing made from the stored NAR), not_found.',
      labelNames: ['kind', 'result'],
      registers: [registry],
    });
    this.uploads = new Counter({
      name: name('uploads_total'),
      help: 'Uploads (PUT), by kind and result: stored, exists (the same was already here), rejected (refused for what it carries).',
      labelNames: ['kind', 'result'],
      registers: [registry],
    });
    this.authRefusals = new Counter({
      name: name('auth_refused_total'),
      help: 'Requests refused for want of a token, by reason (unauthorized: none or not valid; forbidden: without the permission) and the permission the route needs.',
      labelNames: ['reason', 'permission'],
      registers: [registry],
    });
    this.prefetches = new Counter({
      name: name('prefetch_total'),
      help: 'Prefetches (work done before a client asks), by kind (narinfo: a reference of a fetched narinfo; nar: the NAR of a narinfo a client asked for) and result: fetched, skipped (stored, known missing or being fetched already), not_found, failed, dropped (queue full).',
      labelNames: ['kind', 'result'],
      registers: [registry],
    });
    this.prefetchQueued = new Gauge({
      name: name('prefetch_queued'),
      help: 'Prefetches waiting to start.',
      registers: [registry],
      collect: () => this.prefetchQueued.set(this.prefetchSource().queued),
    });
    this.prefetchRunning = new Gauge({
      name: name('prefetch_running'),
      help: 'Prefetches running now.',
      registers: [registry],
      collect: () => this.prefetchRunning.set(this.prefetchSource().running),
    });

    // Known label values start at 0, so that rates and absent-series alerts work from the start.
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
  }

  documentRequest(kind: DocumentKind, result: DocumentResult): void {
    this.documentRequests.labels(kind, result).inc();
  }

  upload(kind: UploadKind, result: UploadResult): void {
    this.uploads.labels(kind, result).inc();
  }

  authRefused(reason: AuthRefusal, permission: string): void {
    this.authRefusals.labels(reason, permission).inc();
  }

  prefetch(kind: 'narinfo' | 'nar', result: PrefetchResult): void {
    this.prefetches.labels(kind, result).inc();
  }

  /** Where the prefetch queue gauges read from at scrape time. */
  watchPrefetch(source: () => { queued: number; running: number }): void {
    this.prefetchSource = source;
  }
}
