import { Inject, Injectable, type OnApplicationShutdown } from '@nestjs/common';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { MetricsService, OTHER_UPSTREAM, type UpstreamKind } from '../metrics/metrics.service';
import { RecentFailures, type FailureKind } from '../metrics/recent-failures';
import { HttpClient, discard, redact, type HttpAnswer } from './http-client';
import { UpstreamClient } from './upstream-client';

/** An upstream answered, but not with 200. */
export class UpstreamStatusError extends Error {
  constructor(
    readonly status: number,
    url: string,
  ) {
    super(`upstream answered ${status} for ${url}`);
    this.name = 'UpstreamStatusError';
  }
}

export type UpstreamBody = Pick<HttpAnswer, 'body' | 'length'>;

const MAX_NARINFO_BYTES = 1024 * 1024;
/** Answers that mean "not here": a miss, not a failure. */
const NOT_FOUND = new Set([404, 410]);

/**
 * The upstream caches, in priority order, and HTTP access to them with metrics: the narinfo and NAR
 * flows fetch through here.
 */
@Injectable()
export class UpstreamService implements OnApplicationShutdown {
  /** Upstreams in priority order (lower first; ties keep the configured order). */
  readonly upstreams: readonly UpstreamClient[];
  /** For NAR URLs outside every upstream (a CDN named by an absolute URL): no credentials. */
  private readonly elsewhere: HttpClient;

  constructor(
    @Inject(APP_CONFIG) config: AppConfig,
    private readonly metrics: MetricsService,
    private readonly failures: RecentFailures,
  ) {
    const timeouts = config.upstreamTimeouts;
    this.upstreams = config.upstreams
      .map((u) => new UpstreamClient(u, timeouts))
      .sort((a, b) => a.priority - b.priority); // stable
    this.elsewhere = new HttpClient(timeouts, { maxRedirections: 5 });
  }

  /** GETs a small text document (a narinfo). Throws UpstreamStatusError for non-200 answers. */
  async getText(upstream: UpstreamClient, path: string): Promise<string> {
    const url = upstream.urlFor(path);
    const { body } = await this.open(url, 'GET', 'narinfo');
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > MAX_NARINFO_BYTES) {
          await discard(body);
          this.metrics.upstreamInvalid(upstream.url);
          const message = `document larger than ${MAX_NARINFO_BYTES} bytes`;
          this.reportFailure('invalid-narinfo', url, message);
          throw new Error(`${redact(url)}: ${message}`);
        }
        chunks.push(chunk);
      }
    } catch (e) {
      if (size <= MAX_NARINFO_BYTES) {
        this.metrics.upstreamFailed(upstream.url, e); // the body broke
        this.reportFailure('upstream-error', url, this.describeError(e));
      }
      throw e;
    }
    return Buffer.concat(chunks).toString('utf8');
  }

  /** Opens a body stream (a NAR). The caller must consume or destroy `body`. */
  async open(
    url: string,
    method: 'GET' | 'HEAD' = 'GET',
    kind: UpstreamKind = method === 'HEAD' ? 'head' : 'nar',
  ): Promise<UpstreamBody> {
    const upstream = this.upstreamOf(url);
    const timing = this.metrics.upstreamRequest(upstream?.url ?? OTHER_UPSTREAM, kind);
    const res = await (upstream ?? this.elsewhere).request(url, { method }).catch((e: unknown) => {
      timing.failed(e);
      this.reportFailure('upstream-error', url, this.describeError(e));
      throw e;
    });
    timing.answered(res.status);
    if (res.status !== 200) {
      if (!NOT_FOUND.has(res.status))
        this.reportFailure('upstream-error', url, `HTTP ${res.status}`);
      await discard(res.body);
      throw new UpstreamStatusError(res.status, redact(url));
    }
    if (method === 'HEAD') await discard(res.body);
    return { body: res.body, length: res.length };
  }

  /** The configured upstream a URL belongs to (credentials go only to their own upstream). */
  upstreamOf(url: string): UpstreamClient | undefined {
    return this.upstreams.find((u) => u.owns(url));
  }

  /** The `upstream` metrics label of a URL: its upstream's base URL (no credentials), or `other`. */
  labelOf(url: string): string {
    return this.upstreamOf(url)?.url ?? OTHER_UPSTREAM;
  }

  /** Records a failure of a request to `url` for the status page (no credentials, no query). */
  reportFailure(kind: FailureKind, url: string, message: string): void {
    const upstream = this.upstreamOf(url);
    const path = url.split(/[?#]/)[0];
    this.failures.record(kind, {
      upstream: upstream?.url ?? null,
      // Under an upstream: the path below its base URL; elsewhere: the URL without its query.
      subject: upstream ? path.slice(upstream.url.length + 1) : path,
      message,
    });
  }

  describeError(e: unknown): string {
    if (e instanceof UpstreamStatusError) return e.message;
    const err = e as NodeJS.ErrnoException;
    return `${err?.code ?? err?.name ?? 'error'}: ${err?.message ?? String(e)}`;
  }

  /**
   * Runs after the HTTP server has closed (every client finished or was cut at --shutdown-timeout):
   * a download still running has nobody left to serve, so it is aborted rather than awaited.
   */
  async onApplicationShutdown(): Promise<void> {
    await Promise.all([...this.upstreams.map((u) => u.close()), this.elsewhere.close()]);
  }
}
