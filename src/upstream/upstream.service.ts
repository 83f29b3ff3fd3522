import { Inject, Injectable, Logger, type OnApplicationShutdown } from '@nestjs/common';
import type { Readable } from 'node:stream';
import { Agent, interceptors, request, type Dispatcher } from 'undici';
import { APP_CONFIG, type AppConfig, type UpstreamConfig } from '../config/app-config';
import { MetricsService, OTHER_UPSTREAM, type UpstreamKind } from '../metrics/metrics.service';

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

export interface UpstreamBody {
  body: Readable;
  /** Content-Length, when the upstream sent one. */
  length?: number;
}

const MAX_NARINFO_BYTES = 1024 * 1024;

/** HTTP access to the upstream caches, with the configured timeouts and credentials. */
@Injectable()
export class UpstreamService implements OnApplicationShutdown {
  private readonly logger = new Logger('upstream');
  private readonly agent: Agent;
  private readonly dispatcher: Dispatcher;
  /** Upstreams in priority order (lower first). */
  readonly upstreams: readonly UpstreamConfig[];

  constructor(
    @Inject(APP_CONFIG) config: AppConfig,
    private readonly metrics: MetricsService,
  ) {
    this.upstreams = config.upstreams;
    const t = config.upstreamTimeouts;
    this.agent = new Agent({
      connect: { timeout: t.connectMs },
      headersTimeout: t.headersMs,
      bodyTimeout: t.bodyMs,
      keepAliveTimeout: 30_000,
    });
    // Follow redirects (some caches send NARs to a CDN); undici drops credentials across origins.
    this.dispatcher = this.agent.compose(interceptors.redirect({ maxRedirections: 5 }));
  }

  /** `<base>/<path>` with the upstream's own query string. */
  urlFor(upstream: UpstreamConfig, path: string): string {
    return `${upstream.url}/${path}${upstream.query}`;
  }

  /** Resolves a narinfo's `URL:` (relative or absolute, opaque) against the upstream it came from. */
  resolveNarUrl(upstream: UpstreamConfig, narUrl: string): string {
    const resolved = new URL(narUrl, `${upstream.url}/`);
    if (!resolved.search && upstream.query && resolved.href.startsWith(`${upstream.url}/`)) {
      resolved.search = upstream.query;
    }
    return resolved.href;
  }

  /** GETs a small text document (a narinfo). Throws UpstreamStatusError for non-200 answers. */
  async getText(upstream: UpstreamConfig, path: string): Promise<string> {
    const url = this.urlFor(upstream, path);
    const { body } = await this.open(url, 'GET', 'narinfo');
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > MAX_NARINFO_BYTES) {
          await discard(body);
          this.metrics.upstreamInvalid(upstream.url);
          throw new Error(`${redact(url)}: document larger than ${MAX_NARINFO_BYTES} bytes`);
        }
        chunks.push(chunk);
      }
    } catch (e) {
      if (size <= MAX_NARINFO_BYTES) this.metrics.upstreamFailed(upstream.url, e); // the body broke
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
    const headers: Record<string, string> = { 'user-agent': 'narwhal' };
    if (upstream?.authorization) headers.authorization = upstream.authorization;
    const timing = this.metrics.upstreamRequest(this.labelOf(url), kind);
    const res = await request(url, { dispatcher: this.dispatcher, method, headers }).catch(
      (e: unknown) => {
        timing.failed(e);
        throw e;
      },
    );
    timing.answered(res.statusCode);
    if (res.statusCode !== 200) {
      await discard(res.body);
      throw new UpstreamStatusError(res.statusCode, redact(url));
    }
    const len = Number(res.headers['content-length']);
    const length = Number.isSafeInteger(len) && len >= 0 ? len : undefined;
    if (method === 'HEAD') await discard(res.body);
    return { body: res.body, length };
  }

  /** The configured upstream a URL belongs to (credentials go only to their own upstream). */
  upstreamOf(url: string): UpstreamConfig | undefined {
    return this.upstreams.find((u) => url === u.url || url.startsWith(`${u.url}/`));
  }

  /** The `upstream` metrics label of a URL: its upstream's base URL (no credentials), or `other`. */
  labelOf(url: string): string {
    return this.upstreamOf(url)?.url ?? OTHER_UPSTREAM;
  }

  describeError(e: unknown): string {
    if (e instanceof UpstreamStatusError) return e.message;
    const err = e as NodeJS.ErrnoException;
    return `${err?.code ?? err?.name ?? 'error'}: ${err?.message ?? String(e)}`;
  }

  get log(): Logger {
    return this.logger;
  }

  /**
   * Runs after the HTTP server has closed (every client finished or was cut at --shutdown-timeout):
   * a download still running has nobody left to serve, so it is aborted rather than awaited.
   */
  async onApplicationShutdown(): Promise<void> {
    await this.agent.destroy();
  }
}

/** Throws away a response body we do not want, without leaving an unhandled stream error behind. */
async function discard(body: Readable & { dump?: () => Promise<void> }): Promise<void> {
  body.on('error', () => undefined);
  if (body.dump) await body.dump().catch(() => undefined);
  else body.destroy();
}

/** Drops credentials from a URL before it is shown anywhere. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.username || u.password) {
      u.username = '';
      u.password = '';
    }
    return u.toString();
  } catch {
    return '(invalid url)';
  }
}
