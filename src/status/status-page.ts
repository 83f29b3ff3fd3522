import { Injectable, type OnModuleInit } from '@nestjs/common';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyReply } from 'fastify';

/** Where the page's files live: next to this module, in src/ and (copied by `npm run build`) in dist/. */
export const ASSETS_DIR = join(__dirname, 'assets');

/** Path of the status page and its files (the page's links are relative to it). */
export const STATUS_PATH = '_narwhal/status';

export interface Asset {
  body: Buffer;
  type: string;
  /** `gzip` when `body` is compressed. */
  encoding?: 'gzip';
}

/**
 * Headers of every status-page answer. The Content-Security-Policy lets the page load nothing but
 * narwhal's own files (no CDN, no fonts, no inline script), and nobody may frame it.
 */
export const PAGE_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

/**
 * The status page's files (HTML, CSS, JavaScript: small, hand-written, shipped in the package), read
 * once at start and kept in memory. The HTML exists twice: for `/` (its links point into
 * `_narwhal/`) and for `/_narwhal/status` (links next to it), both relative so that a reverse proxy
 * may serve narwhal under a path prefix. The files are linked with `?v=<content hash>` and so may be
 * cached for good.
 */
@Injectable()
export class StatusPage implements OnModuleInit {
  private files?: { root: Asset; page: Asset; css: Asset; js: Asset };

  async onModuleInit(): Promise<void> {
    const [html, css, js] = await Promise.all(
      ['status.html', 'status.css', 'status.js'].map((f) => readFile(join(ASSETS_DIR, f))),
    );
    const version = createHash('sha256').update(css).update(js).digest('hex').slice(0, 12);
    const htmlFor = (assets: string): Asset => ({
      body: Buffer.from(
        html.toString('utf8').replaceAll('{{assets}}', assets).replaceAll('{{version}}', version),
      ),
      type: 'text/html; charset=utf-8',
    });
    this.files = {
      root: htmlFor('_narwhal/'),
      page: htmlFor(''),
      css: { body: css, type: 'text/css; charset=utf-8' },
      js: { body: js, type: 'text/javascript; charset=utf-8' },
    };
  }

  /** The page as served at `/`. */
  get root(): Asset {
    return this.loaded().root;
  }

  /** The page as served at `/_narwhal/status`. */
  get page(): Asset {
    return this.loaded().page;
  }

  get css(): Asset {
    return this.loaded().css;
  }

  get js(): Asset {
    return this.loaded().js;
  }

  private loaded(): NonNullable<StatusPage['files']> {
    if (!this.files) throw new Error('the status page is not loaded yet');
    return this.files;
  }
}

/**
 * Whether a request's Accept header asks for HTML before JSON: what a browser sends
 * (`text/html,application/xhtml+xml,…,*\/*;q=0.8`) does; curl's `*\/*`, a missing header, Nix and
 * `application/json` do not. `text/html` must be named: a wildcard never selects the page.
 */
export function prefersHtml(accept: string | undefined): boolean {
  if (!accept) return false;
  let html = 0;
  let json = 0;
  let htmlFirst = false;
  for (const part of accept.split(',')) {
    const [type, ...params] = part.trim().toLowerCase().split(';');
    const qParam = params.map((p) => p.trim()).find((p) => p.startsWith('q='));
    const q = qParam === undefined ? 1 : Number(qParam.slice(2));
    if (!Number.isFinite(q)) continue;
    const mediaType = type.trim();
    if (mediaType === 'text/html' && q > html) {
      html = q;
      if (json === 0) htmlFirst = true;
    } else if (mediaType === 'application/json' || mediaType === 'application/*') {
      json = Math.max(json, q);
    }
  }
  return html > 0 && (html > json || (html === json && htmlFirst));
}

/** Sends `asset` (or, for HEAD, its headers and length only) with the page's security headers. */
export async function sendAsset(
  reply: FastifyReply,
  asset: Asset,
  options: { head?: boolean; cacheControl: string },
): Promise<void> {
  void reply
    .type(asset.type)
    .headers(PAGE_HEADERS)
    .header('cache-control', options.cacheControl)
    .header('content-length', asset.body.length);
  if (asset.encoding) void reply.header('content-encoding', asset.encoding);
  await reply.send(options.head ? undefined : asset.body);
}

/** Whether an Accept-Encoding header allows gzip (named with a quality above 0, or `*`). */
export function acceptsGzip(acceptEncoding: string | undefined): boolean {
  for (const part of (acceptEncoding ?? '').split(',')) {
    const [coding, ...params] = part.trim().toLowerCase().split(';');
    if (coding.trim() !== 'gzip' && coding.trim() !== '*') continue;
    const q = params.map((p) => p.trim()).find((p) => p.startsWith('q='));
    if (q === undefined || Number(q.slice(2)) > 0) return true;
  }
  return false;
}
