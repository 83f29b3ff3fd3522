import {
  Inject,
  Injectable,
  Logger,
  type OnApplicationBootstrap,
  type OnApplicationShutdown,
} from '@nestjs/common';
import { performance } from 'node:perf_hooks';
import { Agent, request } from 'undici';
import { APP_CONFIG, type AppConfig, type UpstreamConfig } from '../config/app-config';

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
}

/**
 * Background reachability of the upstream caches for /readyz: every 30 s, `GET <upstream>/nix-cache-info`
 * with the configured timeouts and the upstream's credentials. Readiness reads the last results and
 * never waits for an upstream; a change of state is logged once.
 */
@Injectable()
export class UpstreamProbe implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger('upstream');
  private readonly agent: Agent;
  private readonly results: UpstreamReachability[];
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  private readonly abort = new AbortController();

  constructor(@Inject(APP_CONFIG) private readonly config: AppConfig) {
    const t = config.upstreamTimeouts;
    // Its own connections, so that a probe measures reaching the upstream, not a pooled socket.
    this.agent = new Agent({
      connect: { timeout: t.connectMs },
      headersTimeout: t.headersMs,
      bodyTimeout: t.bodyMs,
      keepAliveTimeout: 1_000,
    });
    this.results = config.upstreams.map((u) => ({
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
    await this.agent.destroy();
  }

  /** The last results, in priority order (copies). */
  snapshot(): UpstreamReachability[] {
    return this.results.map((r) => ({ ...r }));
  }

  /** Probes every upstream once (a probe still running is joined, not doubled). */
  probeAll(): Promise<void> {
    this.running ??= Promise.all(
      this.config.upstreams.map((u, i) => this.probe(u, this.results[i])),
    ).then(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async probe(upstream: UpstreamConfig, result: UpstreamReachability): Promise<void> {
    if (this.abort.signal.aborted) return;
    const began = performance.now();
    let error: string | undefined;
    try {
      const headers: Record<string, string> = { 'user-agent': 'narwhal' };
      if (upstream.authorization) headers.authorization = upstream.authorization;
      const res = await request(`${upstream.url}/nix-cache-info${upstream.query}`, {
        dispatcher: this.agent,
        headers,
        signal: this.abort.signal,
      });
      await res.body.dump().catch(() => undefined);
      if (res.statusCode !== 200) error = `HTTP ${res.statusCode}`;
    } catch (e) {
      if (this.abort.signal.aborted) return;
      const err = e as NodeJS.ErrnoException;
      error = err?.code ?? err?.name ?? 'error';
    }
    const was = result.reachable;
    result.reachable = error === undefined;
    result.latencyMs = Math.round(performance.now() - began);
    result.checkedAt = new Date().toISOString();
    if (error === undefined) delete result.error;
    else result.error = error;
    if (was !== false && error !== undefined)
      this.logger.warn(`upstream ${upstream.url} is unreachable (${error})`);
    else if (was === false && error === undefined)
      this.logger.log(`upstream ${upstream.url} is reachable again`);
  }
}
