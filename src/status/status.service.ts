import {
  Inject,
  Injectable,
  Logger,
  type OnApplicationBootstrap,
  type OnApplicationShutdown,
} from '@nestjs/common';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { LOCKER, type Locker } from '../locking/locker';
import { LruService } from '../lru/lru.service';
import { MetricsService, type CounterTotals } from '../metrics/metrics.service';
import { RecentFailures, scrubUrls } from '../metrics/recent-failures';
import { ActiveDownloads, type ActiveDownload } from '../nar/active-downloads';
import { INSTANCE, type Instance } from '../instances/instance';
import { PeerClient } from '../nar/peer-client';
import { SigningService } from '../signing/signing.service';
import { UpstreamProbe } from '../upstream/upstream-probe';
import { UpstreamService } from '../upstream/upstream.service';
import { VERSION } from '../version';
import { CounterHistory, type CounterSample } from './counter-history';
import { RateMeter } from './rate-meter';
import type { InFlightDownload, StatusSnapshot, UpstreamStatus } from './status-snapshot';

/** The charts' resolution: one point every 10 s… */
export const SAMPLE_INTERVAL_MS = 10_000;
/** …for the last hour. */
const HISTORY_INTERVALS = 360;

/**
 * Assembles the status page's snapshot from what the flows already keep: MetricsService's counters,
 * the running downloads and peer streams, the upstream probe, the locker, the LRU job and the recent
 * failures. It adds nothing to the request path: every source is read here, when the page asks (and
 * every 10 s for the charts, whose samples are a fixed ring of an hour).
 */
@Injectable()
export class StatusService implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger('status');
  private readonly history = new CounterHistory(SAMPLE_INTERVAL_MS, HISTORY_INTERVALS);
  private readonly rates = new RateMeter();
  private readonly startedAt = Date.now();
  private timer?: NodeJS.Timeout;

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    @Inject(LOCKER) private readonly locker: Locker,
    private readonly metrics: MetricsService,
    private readonly failures: RecentFailures,
    private readonly active: ActiveDownloads,
    private readonly peers: PeerClient,
    @Inject(INSTANCE) private readonly instance: Instance,
    private readonly upstream: UpstreamService,
    private readonly probe: UpstreamProbe,
    private readonly lru: LruService,
    private readonly signing: SigningService,
  ) {}

  onApplicationBootstrap(): void {
    void this.sample();
    this.timer = setInterval(() => void this.sample(), SAMPLE_INTERVAL_MS);
    this.timer.unref();
  }

  onApplicationShutdown(): void {
    clearInterval(this.timer);
  }

  async snapshot(): Promise<StatusSnapshot> {
    const now = Date.now();
    const [totals, usedBytes] = await Promise.all([
      this.metrics.counterTotals(),
      this.metrics.storedBytes(),
    ]);
    const current: CounterSample = { at: now, totals };
    const lock = this.locker.status();
    const { database, storage } = this.config;
    const served = totals.servedBytes;
    return {
      generatedAt: new Date(now).toISOString(),
      instance: {
        hostname: this.config.hostname,
        url: scrubUrls(this.instance.url),
        version: VERSION,
        publicKey: this.signing.publicKey,
        startedAt: new Date(this.startedAt).toISOString(),
        uptimeSeconds: Math.round(process.uptime()),
      },
      backends: {
        database: database.kind,
        storage: storage.kind === 'fs' ? 'filesystem' : 's3',
        lock: {
          backend: lock.backend,
          healthy: lock.healthy,
          degraded: lock.degraded,
          ...(lock.detail ? { detail: lock.detail } : {}),
        },
      },
      totals: {
        narinfo: {
          hit: totals.narinfo.hit,
          miss: totals.narinfo.miss,
          notFound: totals.narinfo.not_found,
          hitRatio: ratio(totals.narinfo.hit, totals.narinfo),
        },
        nar: { ...totals.nar, hitRatio: ratio(totals.nar.hit, totals.nar) },
        servedBytes: { ...served, total: served.storage + served.download + served.peer },
        upstreamBytes: totals.upstreamBytes,
        downloads: totals.downloads,
      },
      history: {
        intervalSeconds: SAMPLE_INTERVAL_MS / 1000,
        points: this.history.points(current),
      },
      downloads: {
        here: this.downloadsHere(now),
        fromPeers: this.peers.streams().map((s) => ({
          name: s.name,
          holder: scrubUrls(s.peerUrl),
          startedAt: new Date(s.startedAt).toISOString(),
          length: s.length ?? null,
        })),
      },
      storage: { usedBytes, lru: this.lru.status() },
      upstreams: this.upstreams(totals),
      failures: this.failures.list(),
    };
  }

  private downloadsHere(now: number): InFlightDownload[] {
    const downloads = this.active.all();
    this.rates.retain(new Set(downloads.map((d) => d.spool.key)));
    return downloads.map((d) => {
      const { spool } = d;
      const elapsed = Math.max(1, now - d.startedAt);
      return {
        name: spool.key,
        holder: scrubUrls(this.instance.url),
        startedAt: new Date(d.startedAt).toISOString(),
        written: spool.written,
        length: spool.length ?? null,
        state: stateOf(d),
        readers: spool.readerCount,
        bytesPerSecond: Math.round(
          this.rates.observe(spool.key, spool.written, now, (spool.written * 1000) / elapsed),
        ),
      };
    });
  }

  private upstreams(totals: CounterTotals): UpstreamStatus[] {
    const hourAgo = this.history.oldest?.totals.upstreams ?? {};
    const priority = new Map(this.upstream.upstreams.map((u) => [u.url, u.priority]));
    return this.probe.snapshot().map((probe) => {
      const counted = totals.upstreams[probe.url] ?? { requests: 0, errors: 0, seconds: 0 };
      return {
        ...probe,
        priority: priority.get(probe.url) ?? 0,
        requests: counted.requests,
        errors: counted.errors,
        errorsLastHour: counted.errors - (hourAgo[probe.url]?.errors ?? 0),
        meanResponseMs:
          counted.requests > 0 ? Math.round((counted.seconds * 1000) / counted.requests) : null,
      };
    });
  }

  private async sample(): Promise<void> {
    try {
      this.history.add({ at: Date.now(), totals: await this.metrics.counterTotals() });
    } catch (e) {
      this.logger.warn(`sampling the counters: ${(e as Error).message}`);
    }
  }
}

/** `hit` out of every request counted in `all`, or null before the first. */
function ratio(hit: number, all: Record<string, number>): number | null {
  const n = Object.values(all).reduce((s, v) => s + v, 0);
  return n === 0 ? null : hit / n;
}

function stateOf(d: ActiveDownload): InFlightDownload['state'] {
  const { spool } = d;
  if (spool.state === 'failed') return 'failed';
  if (spool.state === 'verified') return 'committing';
  return spool.received ? 'verifying' : 'receiving';
}
