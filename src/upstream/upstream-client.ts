import { performance } from 'node:perf_hooks';
import type { UpstreamConfig } from '../config/app-config';
import {
  CircuitBreaker,
  retryAfterMs,
  type BreakerOptions,
  type CircuitSnapshot,
} from './circuit-breaker';
import { isBackground } from './background';
import {
  HttpClient,
  discard,
  type HttpAnswer,
  type HttpRequest,
  type HttpTimeouts,
} from './http-client';

/** The result of one reachability probe (`GET <upstream>/nix-cache-info`). */
export interface ProbeResult {
  latencyMs: number;
  /** Why it failed: `HTTP 503`, `UND_ERR_CONNECT_TIMEOUT`, `ECONNREFUSED`…; absent when it worked. */
  error?: string;
}

/** A request was not sent: the upstream's circuit is open (it failed repeatedly, see CircuitBreaker). */
export class UpstreamSkippedError extends Error {
  override name = 'UpstreamSkippedError';
  readonly code = 'NARWHAL_UPSTREAM_SKIPPED';
  constructor(upstream: string) {
    super(`upstream ${upstream} is skipped after repeated failures`);
  }
}

/**
 * One upstream cache: its base URL, priority, query string and credentials, its connection pool and
 * its health (a circuit breaker). The flows, the reachability probe and metrics labels all go
 * through it; credentials are sent only to URLs under this upstream's base URL.
 */
export class UpstreamClient {
  /** Base URL without credentials, query or trailing slash (also the metrics label). */
  readonly url: string;
  readonly priority: number;
  private readonly query: string;
  private readonly authorization?: string;
  private readonly http: HttpClient;
  private readonly breaker: CircuitBreaker;
  /** Its own short-lived connections, so that a probe measures reaching the upstream. */
  private readonly probeHttp: HttpClient;
  private waiting = 0;
  private waitingInBackground = 0;

  constructor(
    config: UpstreamConfig,
    timeouts: HttpTimeouts,
    breaker: BreakerOptions = { failures: 0, backoffMs: 1, maxBackoffMs: 1 },
  ) {
    this.breaker = new CircuitBreaker(breaker);
    this.url = config.url;
    this.priority = config.priority;
    this.query = config.query;
    this.authorization = config.authorization;
    this.http = new HttpClient(timeouts, { maxRedirections: 5 });
    this.probeHttp = new HttpClient(timeouts, { keepAliveMs: 1_000 });
  }

  /** `<base>/<path>` with the upstream's own query string. */
  urlFor(path: string): string {
    return `${this.url}/${path}${this.query}`;
  }

  /** Resolves a narinfo's `URL:` (relative or absolute, opaque) against this upstream. */
  resolveNarUrl(narUrl: string): string {
    const resolved = new URL(narUrl, `${this.url}/`);
    if (!resolved.search && this.query && resolved.href.startsWith(`${this.url}/`)) {
      resolved.search = this.query;
    }
    return resolved.href;
  }

  /** True if `url` lies under this upstream's base URL (and so gets its credentials). */
  owns(url: string): boolean {
    return url === this.url || url.startsWith(`${this.url}/`);
  }

  /**
   * A request to `url`, with this upstream's credentials if the URL is its own. Throws
   * UpstreamSkippedError without sending anything while the circuit is open. Timeouts, connection
   * errors, 5xx and 429 count as failures of the upstream; a request cancelled through its signal
   * counts as nothing.
   */
  async request(url: string, req: HttpRequest = {}): Promise<HttpAnswer> {
    if (!this.breaker.tryPass()) throw new UpstreamSkippedError(this.url);
    const headers = { ...req.headers };
    if (this.authorization && this.owns(url)) headers.authorization = this.authorization;
    let res: HttpAnswer;
    const counted = isBackground() ? 1 : 0;
    this.waiting++;
    this.waitingInBackground += counted;
    try {
      res = await this.http.request(url, { ...req, headers });
    } catch (e) {
      if (req.signal?.aborted) this.breaker.released();
      else this.breaker.failed();
      throw e;
    } finally {
      this.waiting--;
      this.waitingInBackground -= counted;
    }
    if (res.status >= 500 || res.status === 429) {
      const honoured = res.status === 429 || res.status === 503;
      this.breaker.failed(honoured ? retryAfterMs(res.headers['retry-after']) : undefined);
    } else {
      this.breaker.succeeded();
    }
    return res;
  }

  /** Requests to this upstream sent and still waiting for their response headers. */
  get inFlight(): number {
    return this.waiting;
  }

  /** Of those, the ones made by clients (not by background work, see inBackground). */
  get clientsInFlight(): number {
    return this.waiting - this.waitingInBackground;
  }

  /** The circuit breaker's state: closed (asked), open (skipped until `retryAt`) or half-open. */
  health(): CircuitSnapshot {
    return this.breaker.snapshot();
  }

  /** Fetches `/nix-cache-info` once and says how long it took and what went wrong, if anything. */
  async probe(signal?: AbortSignal): Promise<ProbeResult> {
    const began = performance.now();
    let error: string | undefined;
    try {
      const headers: Record<string, string> = {};
      if (this.authorization) headers.authorization = this.authorization;
      const res = await this.probeHttp.request(this.urlFor('nix-cache-info'), { headers, signal });
      await discard(res.body);
      if (res.status !== 200) error = `HTTP ${res.status}`;
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      error = err?.code ?? err?.name ?? 'error';
    }
    const latencyMs = Math.round(performance.now() - began);
    return error === undefined ? { latencyMs } : { latencyMs, error };
  }

  async close(): Promise<void> {
    await Promise.all([this.http.close(), this.probeHttp.close()]);
  }
}
