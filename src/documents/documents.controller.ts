import { Controller, Get, Head, Param, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { LogService } from './log.service';
import { RealisationService } from './realisation.service';

const JSON_TYPE = 'application/json';

/** Build logs and realisations (listings are `GET /<hash>.ls`, answered by the narinfo route). */
@Controller()
export class DocumentsController {
  constructor(
    private readonly logs: LogService,
    private readonly realisations: RealisationService,
  ) {}

  @Get('log/:drv')
  async log(@Param('drv') drv: string, @Res() reply: FastifyReply): Promise<void> {
    const { body, size } = await this.logs.open(drv);
    await reply.type('text/plain; charset=utf-8').header('content-length', size).send(body);
  }

  @Head('log/:drv')
  async logHead(@Param('drv') drv: string, @Res() reply: FastifyReply): Promise<void> {
    const { body, size } = await this.logs.open(drv);
    body.destroy();
    await reply.type('text/plain; charset=utf-8').header('content-length', size).send();
  }

  @Get('realisations/:file')
  async realisation(@Param('file') file: string, @Res() reply: FastifyReply): Promise<void> {
    await sendJson(reply, await this.realisations.get(`realisations/${file}`));
  }

  @Head('realisations/:file')
  async realisationHead(@Param('file') file: string, @Res() reply: FastifyReply): Promise<void> {
    await sendJson(reply, await this.realisations.get(`realisations/${file}`), true);
  }

  @Get('build-trace-v2/:drv/:file')
  async buildTrace(
    @Param('drv') drv: string,
    @Param('file') file: string,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    await sendJson(reply, await this.realisations.get(`build-trace-v2/${drv}/${file}`));
  }

  @Head('build-trace-v2/:drv/:file')
  async buildTraceHead(
    @Param('drv') drv: string,
    @Param('file') file: string,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    await sendJson(reply, await this.realisations.get(`build-trace-v2/${drv}/${file}`), true);
  }
}

/** A small JSON document (a listing, a realisation); HEAD gets the headers only. */
export async function sendJson(reply: FastifyReply, body: Buffer, head = false): Promise<void> {
  void reply.type(JSON_TYPE).header('content-length', body.length);
  await reply.send(head ? undefined : body);
}
