import { Controller, Get, Head, Param, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { NotFoundError } from '../common/errors';
import { sendJson } from '../documents/documents.controller';
import { ListingService } from '../documents/listing.service';
import { NarInfoService } from './narinfo.service';

export const NARINFO_SUFFIX = '.narinfo';
export const NARINFO_CONTENT_TYPE = 'text/x-nix-narinfo';
const LISTING_SUFFIX = '.ls';

/** Top-level files of the cache: `<hash>.narinfo` and `<hash>.ls` (the NAR's file listing). */
@Controller()
export class NarInfoController {
  constructor(
    private readonly narinfos: NarInfoService,
    private readonly listings: ListingService,
  ) {}

  @Get(':file')
  async get(@Param('file') file: string, @Res() reply: FastifyReply): Promise<void> {
    if (file.endsWith(LISTING_SUFFIX)) {
      await sendJson(reply, await this.listings.get(file.slice(0, -LISTING_SUFFIX.length)));
      return;
    }
    const text = await this.narinfos.get(hashOf(file));
    await reply.type(NARINFO_CONTENT_TYPE).send(text);
  }

  @Head(':file')
  async head(@Param('file') file: string, @Res() reply: FastifyReply): Promise<void> {
    if (file.endsWith(LISTING_SUFFIX)) {
      await sendJson(reply, await this.listings.get(file.slice(0, -LISTING_SUFFIX.length)), true);
      return;
    }
    const text = await this.narinfos.get(hashOf(file));
    await reply.type(NARINFO_CONTENT_TYPE).header('content-length', Buffer.byteLength(text)).send();
  }
}

/** `<hash>.narinfo` → hash; any other top-level name is simply not here. */
function hashOf(file: string): string {
  if (!file.endsWith(NARINFO_SUFFIX)) throw new NotFoundError(`${file} not found`);
  return file.slice(0, -NARINFO_SUFFIX.length);
}
