import type { IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import { Agent, buildConnector, interceptors, request, type Dispatcher } from 'undici';
import { guardSocketEnd } from './socket-end-guard';

/** Connect, response-header and between-chunk timeouts of outgoing requests. */
export interface HttpTimeouts {
  connectMs: number;
  headersMs: number;
  bodyMs: number;
}

/** An answer whose body the caller must consume or destroy (or `discard`). */
export interface HttpAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Readable;
  /** Content-Length, when the server sent a valid one. */
  length?: number;
}

export interface HttpRequest {
  method?: 'GET' | 'HEAD';
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

/**
 * One connection pool for outgoing HTTP, with narwhal's timeouts and User-Agent: every request
 * narwhal makes (to an upstream cache, to a peer instance) goes through one of these.
 */
export class HttpClient {
  private readonly agent: Agent;
  private readonly dispatcher: Dispatcher;

  constructor(
    timeouts: HttpTimeouts,
    options: { keepAliveMs?: number; maxRedirections?: number } = {},
  ) {
    const connect = buildConnector({ timeout: timeouts.connectMs });
    this.agent = new Agent({
      // Every connection is guarded against undici's crash on a server's close (see guardSocketEnd).
      connect: (opts, done) =>
        connect(opts, (...result) => {
          if (result[1]) guardSocketEnd(result[1]);
          done(...result);
        }),
      headersTimeout: timeouts.headersMs,
      bodyTimeout: timeouts.bodyMs,
      keepAliveTimeout: options.keepAliveMs ?? 30_000,
    });
    // Redirects are followed for upstreams (some caches send NARs to a CDN); undici drops the
    // Authorization header when a redirect leaves the origin.
    this.dispatcher = options.maxRedirections
      ? this.agent.compose(interceptors.redirect({ maxRedirections: options.maxRedirections }))
      : this.agent;
  }

  async request(url: string, req: HttpRequest = {}): Promise<HttpAnswer> {
    const res = await request(url, {
      dispatcher: this.dispatcher,
      method: req.method ?? 'GET',
      headers: { 'user-agent': 'narwhal', ...req.headers },
      signal: req.signal,
    });
    return {
      status: res.statusCode,
      headers: res.headers,
      body: res.body,
      length: contentLength(res.headers),
    };
  }

  /** Closes the pool at once: requests still running fail. */
  async close(): Promise<void> {
    await this.agent.destroy();
  }
}

/** The Content-Length header as a number, when it is a valid one. */
export function contentLength(headers: IncomingHttpHeaders): number | undefined {
  const n = Number(headers['content-length']);
  return headers['content-length'] !== undefined && Number.isSafeInteger(n) && n >= 0
    ? n
    : undefined;
}

/** Throws away a response body we do not want, without leaving an unhandled stream error behind. */
export async function discard(body: Readable & { dump?: () => Promise<void> }): Promise<void> {
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
