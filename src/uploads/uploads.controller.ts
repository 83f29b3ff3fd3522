import { Controller, Delete, Param, Put, Req, Res, UseGuards } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { AccessGuard, tokenNameOf } from '../auth/access.guard';
import { Access } from '../common/access';
import { NotFoundError } from '../common/errors';
import { DeleteService } from './delete.service';
import { UploadService, type UploadOutcome } from './upload.service';

const NARINFO_SUFFIX = '.narinfo';
const LISTING_SUFFIX = '.ls';

/**
 * Uploads (with --cache-allow-put-verb), as `nix copy --to` and `nix store copy-log --to` send them;
 * each needs a token with the `write` permission. The bodies are read by the service as streams
 * (narwhal parses no request body itself).
 */
@Controller()
@UseGuards(AccessGuard)
@Access('write')
export class UploadsController {
  constructor(private readonly uploads: UploadService) {}

  @Put('nix-cache-info')
  async cacheInfo(@Req() req: FastifyRequest, @Res() reply: FastifyReply): Promise<void> {
    await this.uploads.cacheInfo(req.raw);
    await reply.type('text/plain; charset=utf-8').send('this cache has its own nix-cache-info\n');
  }

  @Put('nar/:name')
  async nar(
    @Param('name') name: string,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    await answer(reply, await this.uploads.nar(name, req.raw, who(req)));
  }

  /** `<hash>.narinfo` and `<hash>.ls`. */
  @Put(':file')
  async file(
    @Param('file') file: string,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    if (file.endsWith(NARINFO_SUFFIX)) {
      const hash = file.slice(0, -NARINFO_SUFFIX.length);
      await answer(reply, await this.uploads.narInfo(hash, req.raw, who(req)));
      return;
    }
    if (file.endsWith(LISTING_SUFFIX)) {
      const hash = file.slice(0, -LISTING_SUFFIX.length);
      await answer(reply, await this.uploads.listing(hash, req.raw, who(req)));
      return;
    }
    throw new NotFoundError(`${file} is not a file of a binary cache`);
  }

  @Put('log/:drv')
  async log(
    @Param('drv') drv: string,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    await answer(reply, await this.uploads.log(drv, req.raw, who(req)));
  }

  @Put('realisations/:file')
  async realisation(
    @Param('file') file: string,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    await answer(reply, await this.uploads.realisation(`realisations/${file}`, req.raw, who(req)));
  }

  @Put('build-trace-v2/:drv/:file')
  async buildTrace(
    @Param('drv') drv: string,
    @Param('file') file: string,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    const path = `build-trace-v2/${drv}/${file}`;
    await answer(reply, await this.uploads.realisation(path, req.raw, who(req)));
  }
}

/** Deletes (with --cache-allow-delete-verb); each needs a token with the `delete` permission. */
@Controller()
@UseGuards(AccessGuard)
@Access('delete')
export class DeletesController {
  constructor(private readonly deletes: DeleteService) {}

  @Delete(':file')
  async file(
    @Param('file') file: string,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    if (!file.endsWith(NARINFO_SUFFIX)) throw new NotFoundError(`${file} cannot be deleted`);
    await this.deletes.narInfo(file.slice(0, -NARINFO_SUFFIX.length), who(req));
    await reply.type('text/plain; charset=utf-8').send('deleted\n');
  }

  @Delete('nar/:name')
  async nar(
    @Param('name') name: string,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    await this.deletes.nar(name, who(req));
    await reply.type('text/plain; charset=utf-8').send('deleted\n');
  }
}

/** The token's name, for the logs (the guard let the request in with one). */
function who(req: FastifyRequest): string {
  return tokenNameOf(req) ?? 'unknown';
}

async function answer(reply: FastifyReply, outcome: UploadOutcome): Promise<void> {
  await reply
    .type('text/plain; charset=utf-8')
    .send(outcome === 'stored' ? 'stored\n' : 'already here\n');
}
