import {
  Injectable,
  Logger,
  type OnApplicationBootstrap,
  type OnApplicationShutdown,
} from '@nestjs/common';
import type { CircuitState } from './circuit-breaker';
import type { UpstreamClient } from './upstream-client';
import { UpstreamService } from './upstream.service';

/** How often each upstream's `/nix-cache-info` is fetched. */
export const PROBE_INTERVAL_MS = 30_000;

/** What /readyz shows about one upstream: base URL only (no credentials, no query string). */
export interface UpstreamReachability {
  url: string;
  /** null until the first probe has finished. */
  reachable: boolean | null;
  latencyMs: number | null;
  checkedAt: string | null;
  /** Why the last probe failed: `HTTP 503`, `UND_ERR_CONNECT_TIMEOUT`, `ECONNREFUSED`… */
  error?: string;
  /** From the requests narwhal makes for clients: closed (asked), open (skipped), half-open (one trial). */
  circuit: CircuitState;
  /** Failed requests in a row. */
  consecutiveFailures: number;
  /** While the circuit is open: when the upstream is tried again. */
  retryAt?: string;
}

type ProbeResultFields = Omit<UpstreamReachability, 'circuit' | 'consecutiveFailures' | 'retryAt'>;

/**
 * Background reachability of the upstream caches for /readyz: every 30 s, `GET <upstream>/nix-cache-info`
 * with the configured timeouts and the upstream's credentials. Readiness reads the last results and
 * never waits for an upstream; a change of state is logged once.
 */
@Injectable()
export class UpstreamProbe implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger('upstream');
  private readonly results: ProbeResultFields[];
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  private readonly abort = new AbortController();

  constructor(private readonly upstream: UpstreamService) {
    this.results = upstream.upstreams.map((u) => ({
      url: u.url,
      reachable: null,
      latencyMs: null,
      checkedAt: null,
    }));
  }

  onApplicationBootstrap(): void {
    void this.probeAll();
    this.timer = setInterval(() => void this.probeAll(), PROBE_INTERVAL_MS);
    this.timer.unref();
  }

  async onApplicationShutdown(): Promise<void> {
    clearInterval(this.timer);
    this.abort.abort();
    await this.running;
  }

  /** The last results, in priority order (copies), with each upstream's circuit state now. */
  snapshot(): UpstreamReachability[] {
    return this.results.map((r, i) => {
      const health = this.upstream.upstreams[i].health();
      return {
        ...r,
        circuit: health.state,
        consecutiveFailures: health.consecutiveFailures,
        ...(health.retryAt !== undefined
          ? { retryAt: new Date(health.retryAt).toISOString() }
          : {}),
      };
    });
  }

  /** Probes every upstream once (a probe still running is joined, not doubled). */
  probeAll(): Promise<void> {
    this.running ??= Promise.all(
      this.upstream.upstreams.map((u, i) => this.probe(u, this.results[i])),
    ).then(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async probe(upstream: UpstreamClient, result: ProbeResultFields): Promise<void> {
    if (this.abort.signal.aborted) return;
    const { latencyMs, error } = await upstream.probe(this.abort.signal);
    if (this.abort.signal.aborted) return;
    const was = result.reachable;
    result.reachable = error === undefined;
    result.latencyMs = latencyMs;
    result.checkedAt = new Date().toISOString();
    if (error === undefined) delete result.error;
    else result.error = error;
    if (was !== false && error !== undefined)
      this.logger.warn(`upstream ${upstream.url} is unreachable (${error})`);
    else if (was === false && error === undefined)
      this.logger.log(`upstream ${upstream.url} is reachable again`);
  }
}
