import { Controller, Get, Head, Param, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { NotFoundError } from '../common/errors';
import { NarInfoService } from './narinfo.service';

const NARINFO_SUFFIX = '.narinfo';

@Controller()
export class NarInfoController {
  constructor(private readonly narinfos: NarInfoService) {}

  @Get(':file')
  async get(@Param('file') file: string, @Res() reply: FastifyReply): Promise<void> {
    const text = await this.narinfos.get(hashOf(file));
    await reply.type('text/x-nix-narinfo').send(text);
  }

  @Head(':file')
  async head(@Param('file') file: string, @Res() reply: FastifyReply): Promise<void> {
    const text = await this.narinfos.get(hashOf(file));
    await reply.type('text/x-nix-narinfo').header('content-length', Buffer.byteLength(text)).send();
  }
}

/** `<hash>.narinfo` → hash; any other top-level name is simply not here. */
function hashOf(file: string): string {
  if (!file.endsWith(NARINFO_SUFFIX)) throw new NotFoundError(`${file} not found`);
  return file.slice(0, -NARINFO_SUFFIX.length);
}
