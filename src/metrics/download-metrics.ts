import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { metricName as name } from './metric-prefix';

export type LockKind = 'narinfo' | 'nar' | 'lru';

/**
 * The NAR downloads and the locks around them: downloads finished and running, the readers attached
 * to them, clients dropped, lock waits, takeovers and lost leases, and the lock operations served
 * in-process while Redis is away, registered in `registry` (the degraded-lock counter once a backend
 * reports it).
 */
export class DownloadMetrics {
  readonly downloads: Counter<'outcome'>;
  readonly inFlight: Gauge;
  readonly clients: Gauge;
  readonly lockWait: Histogram<'kind'>;
  readonly lockTakeovers: Counter<'kind'>;
  readonly locksLost: Counter<'kind'>;
  readonly clientsDropped: Counter<'reason'>;
  private downloadSource: () => Iterable<{ readerCount: number }> = () => [];

  constructor(private readonly registry: Registry) {
    this.downloads = new Counter({
      name: name('downloads_total'),
      help: 'Finished upstream NAR downloads: stored (verified and committed) or discarded (failed, truncated or mismatching).',
      labelNames: ['outcome'],
      registers: [registry],
    });
    this.inFlight = new Gauge({
      name: name('downloads_in_flight'),
      help: 'Upstream NAR downloads this instance is running.',
      registers: [registry],
      collect: () => this.inFlight.set([...this.downloadSource()].length),
    });
    this.clients = new Gauge({
      name: name('download_clients'),
      help: 'Readers attached to in-flight downloads: clients of this instance, peers streaming from it and, with S3 storage, the upload.',
      registers: [registry],
      collect: () => {
        let readers = 0;
        for (const d of this.downloadSource()) readers += d.readerCount;
        this.clients.set(readers);
      },
    });
    this.lockWait = new Histogram({
      name: name('lock_wait_seconds'),
      help: 'Time to obtain a lock (narinfo: waiting for the lookup lock; nar, lru: one try-lock attempt).',
      labelNames: ['kind'],
      buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60],
      registers: [registry],
    });
    this.lockTakeovers = new Counter({
      name: name('lock_takeovers_total'),
      help: 'Locks taken over from a holder that was gone (its instance killed or restarted), by kind.',
      labelNames: ['kind'],
      registers: [registry],
    });
    this.locksLost = new Counter({
      name: name('lock_lost_total'),
      help: 'Leases this instance found lost while still working under them (paused past the lease), by kind: the work may then be done twice.',
      labelNames: ['kind'],
      registers: [registry],
    });
    this.clientsDropped = new Counter({
      name: name('clients_dropped_total'),
      help: 'NAR clients disconnected by narwhal, by reason: stalled (took no byte for --cache-client-stall-timeout).',
      labelNames: ['reason'],
      registers: [registry],
    });

    // Known label values start at 0, so that rates and absent-series alerts work from the start.
    for (const o of ['stored', 'discarded']) this.downloads.labels(o).inc(0);
    this.clientsDropped.labels('stalled').inc(0);
    for (const k of ['narinfo', 'nar', 'lru']) {
      this.lockTakeovers.labels(k).inc(0);
      this.locksLost.labels(k).inc(0);
    }
  }

  /** Where the download gauges read from at scrape time (the NAR flow's running downloads). */
  watchDownloads(source: () => Iterable<{ readerCount: number }>): void {
    this.downloadSource = source;
  }

  downloadFinished(outcome: 'stored' | 'discarded'): void {
    this.downloads.labels(outcome).inc();
  }

  clientDropped(reason: 'stalled'): void {
    this.clientsDropped.labels(reason).inc();
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

  /**
   * A lock backend that can fall back to in-process locks reports here how many operations it served
   * that way so far; without one, the series does not exist.
   */
  watchDegradedLockOperations(count: () => number): void {
    let reported = 0;
    const degraded: Counter = new Counter({
      name: name('lock_degraded_operations_total'),
      help: 'Lock operations served by in-process locks because Redis was unreachable (degraded mode).',
      registers: [this.registry],
      collect: () => {
        const now = count();
        degraded.inc(now - reported);
        reported = now;
      },
    });
  }
}
