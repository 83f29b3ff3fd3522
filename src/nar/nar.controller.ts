import { Controller, Get, Head, Param, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { InvalidNarNameError } from '../nix/errors';
import { NarService } from './nar.service';

const NAR_CONTENT_TYPE = 'application/x-nix-nar';

@Controller('nar')
export class NarController {
  constructor(private readonly nars: NarService) {}

  @Get(':name')
  async get(@Param('name') name: string, @Res() reply: FastifyReply): Promise<void> {
    const nar = await this.nars.get(name);
    void reply.type(NAR_CONTENT_TYPE).header('x-narwhal-source', nar.source);
    if (nar.length !== undefined) void reply.header('content-length', nar.length);
    // A stream error after the headers makes Fastify destroy the socket: no clean end for bad bytes.
    await reply.send(nar.body);
  }

  @Head(':name')
  async head(@Param('name') name: string, @Res() reply: FastifyReply): Promise<void> {
    const { length } = await this.nars.head(name);
    void reply.type(NAR_CONTENT_TYPE);
    if (length !== undefined) void reply.header('content-length', length);
    await reply.send();
  }

  /** Anything deeper under nar/ (e.g. `nar/../x`) is not a NAR file name. */
  @Get('*')
  nested(): never {
    throw new InvalidNarNameError('invalid NAR path');
  }
}
