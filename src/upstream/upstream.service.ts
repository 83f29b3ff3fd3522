import { brotliDecompressSync, gunzipSync, inflateSync } from 'node:zlib';
import { Inject, Injectable, type OnApplicationShutdown } from '@nestjs/common';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { MetricsService, OTHER_UPSTREAM, type UpstreamKind } from '../metrics/metrics.service';
import { RecentFailures, type FailureKind } from '../metrics/recent-failures';
import { withDeadline } from './deadline';
import { HttpClient, discard, redact, type HttpAnswer } from './http-client';
import { UpstreamClient, UpstreamSkippedError } from './upstream-client';

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

export type UpstreamBody = Pick<HttpAnswer, 'body' | 'length'> &
  Partial<Pick<HttpAnswer, 'headers'>>;

const MAX_NARINFO_BYTES = 1024 * 1024;
/** Answers that mean "not here": a miss, not a failure. */
const NOT_FOUND = new Set([404, 410]);

export interface TextRequest {
  kind?: UpstreamKind;
  /** Cancels the request (a hedged lookup that no longer needs this answer). */
  signal?: AbortSignal;
  /** Largest body accepted; default 1 MiB. */
  maxBytes?: number;
}

/**
 * The upstream caches, in priority order, and HTTP access to them with metrics: the narinfo and NAR
 * flows fetch through here.
 */
@Injectable()
export class UpstreamService implements OnApplicationShutdown {
  /** Upstreams in priority order (lower first; ties keep the configured order). */
  readonly upstreams: readonly UpstreamClient[];
  /** Deadline of a whole narinfo fetch (headers and body). */
  private readonly narinfoMs: number;
  /** For NAR URLs outside every upstream (a CDN named by an absolute URL): no credentials. */
  private readonly elsewhere: HttpClient;

  constructor(
    @Inject(APP_CONFIG) config: AppConfig,
    private readonly metrics: MetricsService,
    private readonly failures: RecentFailures,
  ) {
    const timeouts = config.upstreamTimeouts;
    this.narinfoMs = timeouts.narinfoMs;
    this.upstreams = config.upstreams
      .map((u) => new UpstreamClient(u, timeouts, config.upstreamBreaker))
      .sort((a, b) => a.priority - b.priority); // stable
    this.elsewhere = new HttpClient(timeouts, { maxRedirections: 5 });
    metrics.watchCircuits(() =>
      this.upstreams.map((u) => ({ url: u.url, state: u.health().state })),
    );
  }

  /**
   * GETs a small document (a narinfo; `maxBytes` bounds it) as a Buffer, all of it within
   * --cache-upstream-narinfo-timeout (an upstream dripping a byte at a time cannot hold a lookup).
   * Throws UpstreamStatusError for answers other than 200 and UpstreamSkippedError while the
   * upstream's circuit is open.
   */
  async getBytes(upstream: UpstreamClient, path: string, req: TextRequest = {}): Promise<Buffer> {
    const url = upstream.urlFor(path);
    const max = req.maxBytes ?? MAX_NARINFO_BYTES;
    const deadline = withDeadline(this.narinfoMs, req.signal);
    try {
      return await this.readSmall(upstream, url, max, req, deadline.signal);
    } finally {
      deadline.clear();
    }
  }

  /** getBytes within `signal`. */
  private async readSmall(
    upstream: UpstreamClient,
    url: string,
    max: number,
    req: TextRequest,
    signal: AbortSignal,
  ): Promise<Buffer> {
    const { body, headers } = await this.open(url, 'GET', req.kind ?? 'narinfo', signal);
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > max) {
          await discard(body);
          this.metrics.upstreamInvalid(upstream.url);
          const message = `document larger than ${max} bytes`;
          this.reportFailure('invalid-narinfo', url, message);
          throw new Error(`${redact(url)}: ${message}`);
        }
        chunks.push(chunk);
      }
    } catch (e) {
      // The body broke (not cancelled by us, not too large).
      if (size <= max && !req.signal?.aborted) {
        this.metrics.upstreamFailed(upstream.url, e);
        this.reportFailure('upstream-error', url, this.describeError(e));
      }
      throw e;
    }
    const bytes = Buffer.concat(chunks);
    return headers?.['content-encoding'] ? decodeSmall(bytes, headers['content-encoding']) : bytes;
  }

  /** GETs a small text document (a narinfo). See getBytes. */
  async getText(upstream: UpstreamClient, path: string, req: TextRequest = {}): Promise<string> {
    return (await this.getBytes(upstream, path, req)).toString('utf8');
  }

  /**
   * Opens a body stream (a NAR, a log). The caller must consume or destroy `body`. Throws
   * UpstreamStatusError for answers other than 200 and UpstreamSkippedError (counted in
   * `narwhal_upstream_skipped_total`) while the upstream's circuit is open.
   */
  async open(
    url: string,
    method: 'GET' | 'HEAD' = 'GET',
    kind: UpstreamKind = method === 'HEAD' ? 'head' : 'nar',
    signal?: AbortSignal,
  ): Promise<UpstreamBody> {
    const upstream = this.upstreamOf(url);
    const label = upstream?.url ?? OTHER_UPSTREAM;
    const timing = this.metrics.upstreamRequest(label, kind);
    const res = await (upstream ?? this.elsewhere)
      .request(url, { method, signal })
      .catch((e: unknown) => {
        if (e instanceof UpstreamSkippedError) this.metrics.upstreamSkipped(label);
        else if (signal?.aborted && !isDeadline(signal.reason)) timing.cancelled();
        else {
          timing.failed(e);
          this.reportFailure('upstream-error', url, this.describeError(e));
        }
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
    return { body: res.body, length: res.length, headers: res.headers };
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
    if (e instanceof UpstreamStatusError || e instanceof UpstreamSkippedError) return e.message;
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

/**
 * Removes a transport encoding (`Content-Encoding`) from a small body. Nix uploads narinfos,
 * listings and logs with one when asked to (`narinfo-compression`, …), and some servers keep it.
 */
function decodeSmall(bytes: Buffer, encoding: string | string[]): Buffer {
  const e = (Array.isArray(encoding) ? encoding[0] : encoding).trim().toLowerCase();
  switch (e) {
    case '':
    case 'identity':
      return bytes;
    case 'br':
      return brotliDecompressSync(bytes, { maxOutputLength: MAX_DECODED_BYTES });
    case 'gzip':
    case 'x-gzip':
      return gunzipSync(bytes, { maxOutputLength: MAX_DECODED_BYTES });
    case 'deflate':
      return inflateSync(bytes, { maxOutputLength: MAX_DECODED_BYTES });
    default:
      throw new Error(`unsupported Content-Encoding ${JSON.stringify(e)}`);
  }
}

/** Largest small document after decoding its transport encoding. */
const MAX_DECODED_BYTES = 64 * 1024 * 1024;

/** True for the reason of a deadline that fired (withDeadline, AbortSignal.timeout), not a cancellation. */
function isDeadline(reason: unknown): boolean {
  return (reason as { name?: unknown } | null)?.name === 'TimeoutError';
}
