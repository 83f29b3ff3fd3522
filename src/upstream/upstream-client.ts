import { performance } from 'node:perf_hooks';
import type { UpstreamConfig } from '../config/app-config';
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

/**
 * One upstream cache: its base URL, priority, query string and credentials, and its connection pool.
 * The flows, the reachability probe and metrics labels all go through it; credentials are sent only
 * to URLs under this upstream's base URL.
 */
export class UpstreamClient {
  /** Base URL without credentials, query or trailing slash (also the metrics label). */
  readonly url: string;
  readonly priority: number;
  private readonly query: string;
  private readonly authorization?: string;
  private readonly http: HttpClient;
  /** Its own short-lived connections, so that a probe measures reaching the upstream. */
  private readonly probeHttp: HttpClient;

  constructor(config: UpstreamConfig, timeouts: HttpTimeouts) {
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

  /** A request to `url`, with this upstream's credentials if the URL is its own. */
  request(url: string, req: HttpRequest = {}): Promise<HttpAnswer> {
    const headers = { ...req.headers };
    if (this.authorization && this.owns(url)) headers.authorization = this.authorization;
    return this.http.request(url, { ...req, headers });
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
