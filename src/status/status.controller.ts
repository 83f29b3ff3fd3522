import { Controller, Get, Head, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { sendAsset, StatusPage, STATUS_PATH, type Asset } from './status-page';
import { StatusService } from './status.service';

/** The page's files may be cached for good: the page links them with `?v=<content hash>`. */
const IMMUTABLE = 'public, max-age=31536000, immutable';

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
  async json(@Res() reply: FastifyReply): Promise<void> {
    await sendAsset(reply, await this.jsonAsset(), { cacheControl: 'no-store' });
  }

  @Head(`${STATUS_PATH}.json`)
  async jsonHead(@Res() reply: FastifyReply): Promise<void> {
    await sendAsset(reply, await this.jsonAsset(), { cacheControl: 'no-store', head: true });
  }

  @Get(`${STATUS_PATH}.css`)
  css(@Res() reply: FastifyReply): Promise<void> {
    return sendAsset(reply, this.page.css, { cacheControl: IMMUTABLE });
  }

  @Get(`${STATUS_PATH}.js`)
  js(@Res() reply: FastifyReply): Promise<void> {
    return sendAsset(reply, this.page.js, { cacheControl: IMMUTABLE });
  }

  private async jsonAsset(): Promise<Asset> {
    const body = Buffer.from(JSON.stringify(await this.status.snapshot()));
    return { body, type: 'application/json; charset=utf-8' };
  }
}
