import { Controller, Get, Head, Headers, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import { Access } from '../common/access';
import { acceptsGzip, sendAsset, StatusPage, STATUS_PATH, type Asset } from './status-page';
import { StatusService } from './status.service';

/** The page's files may be cached for good: the page links them with `?v=<content hash>`. */
const IMMUTABLE = 'public, max-age=31536000, immutable';
/** The JSON is gzipped from this size on (an hour of chart points is ~75 KB, ~2 KB gzipped). */
const GZIP_FROM_BYTES = 4096;
const gzipAsync = promisify(gzip);

/**
 * The status page at a stable path, its data as JSON and its two files. (`GET /` shows the same page
 * to browsers: see CacheInfoController.)
 */
@Controller()
export class StatusController {
  constructor(
    private readonly page: StatusPage,
    private readonly status: StatusService,
  ) {}

  @Get(STATUS_PATH)
  html(@Res() reply: FastifyReply): Promise<void> {
    return sendAsset(reply, this.page.page, { cacheControl: 'no-cache' });
  }

  @Head(STATUS_PATH)
  htmlHead(@Res() reply: FastifyReply): Promise<void> {
    return sendAsset(reply, this.page.page, { cacheControl: 'no-cache', head: true });
  }

  @Get(`${STATUS_PATH}.json`)
  async json(
    @Headers('accept-encoding') encodings: string | undefined,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    await sendAsset(reply, await this.jsonAsset(encodings, reply), { cacheControl: 'no-store' });
  }

  @Head(`${STATUS_PATH}.json`)
  async jsonHead(
    @Headers('accept-encoding') encodings: string | undefined,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    const asset = await this.jsonAsset(encodings, reply);
    await sendAsset(reply, asset, { cacheControl: 'no-store', head: true });
  }

  @Get(`${STATUS_PATH}.css`)
  @Access('public')
  css(@Res() reply: FastifyReply): Promise<void> {
    return sendAsset(reply, this.page.css, { cacheControl: IMMUTABLE });
  }

  @Get(`${STATUS_PATH}.js`)
  @Access('public')
  js(@Res() reply: FastifyReply): Promise<void> {
    return sendAsset(reply, this.page.js, { cacheControl: IMMUTABLE });
  }

  /** The snapshot as JSON, gzipped when it is large and the client takes gzip. */
  private async jsonAsset(encodings: string | undefined, reply: FastifyReply): Promise<Asset> {
    const body = Buffer.from(JSON.stringify(await this.status.snapshot()));
    const type = 'application/json; charset=utf-8';
    void reply.header('vary', 'Accept-Encoding');
    if (body.length < GZIP_FROM_BYTES || !acceptsGzip(encodings)) return { body, type };
    return { body: await gzipAsync(body), type, encoding: 'gzip' };
  }
}
