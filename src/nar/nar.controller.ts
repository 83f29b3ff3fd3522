import { Controller, Get, Head, Param, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { NotFoundError } from '../common/errors';
import { MetricsService } from '../metrics/metrics.service';
import { InvalidNarNameError } from '../nix/errors';
import { parseNarFileName } from '../nix/compression';
import { NarService } from './nar.service';
import { PEER_DOWNLOADS_PATH } from './peer-client';

const NAR_CONTENT_TYPE = 'application/x-nix-nar';

@Controller()
export class NarController {
  constructor(
    private readonly nars: NarService,
    private readonly metrics: MetricsService,
  ) {}

  @Get('nar/:name')
  async get(@Param('name') name: string, @Res() reply: FastifyReply): Promise<void> {
    const nar = await this.nars.get(name);
    void reply.type(NAR_CONTENT_TYPE).header('x-narwhal-source', nar.source);
    if (nar.length !== undefined) void reply.header('content-length', nar.length);
    // A stream error after the headers makes Fastify destroy the socket: no clean end for bad bytes.
    await reply.send(this.metrics.countServed(nar.source, nar.body));
  }

  @Head('nar/:name')
  async head(@Param('name') name: string, @Res() reply: FastifyReply): Promise<void> {
    const { length } = await this.nars.head(name);
    void reply.type(NAR_CONTENT_TYPE);
    if (length !== undefined) void reply.header('content-length', length);
    await reply.send();
  }

  /** Anything deeper under nar/ (e.g. `nar/../x`) is not a NAR file name. */
  @Get('nar/*')
  nested(): never {
    throw new InvalidNarNameError('invalid NAR path');
  }

  @Head('nar/*')
  nestedHead(): never {
    throw new InvalidNarNameError('invalid NAR path');
  }

  /** For other narwhal instances: stream a download this instance is running (404 if none). */
  @Get(`${PEER_DOWNLOADS_PATH}/:name`)
  async peer(@Param('name') name: string, @Res() reply: FastifyReply): Promise<void> {
    parseNarFileName(name);
    const running = this.nars.streamForPeer(name);
    if (!running) throw new NotFoundError(`no download of ${name} is running here`);
    void reply.type(NAR_CONTENT_TYPE);
    if (running.length !== undefined) void reply.header('content-length', running.length);
    await reply.send(running.body);
  }
}
