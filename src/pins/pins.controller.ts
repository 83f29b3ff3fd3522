import { Controller, Delete, Get, Logger, Param, Put, Req, Res, UseGuards } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { AccessGuard, tokenNameOf } from '../auth/access.guard';
import { Access } from '../common/access';
import { PinService } from './pin.service';

/** Path of the pins endpoint. */
export const PINS_PATH = '_narwhal/pins';

/** Pins over HTTP; every route needs a token with the `pin` permission. */
@Controller(PINS_PATH)
@UseGuards(AccessGuard)
@Access('pin')
export class PinsController {
  private readonly logger = new Logger('pin');

  constructor(private readonly pins: PinService) {}

  @Get()
  async list(@Res() reply: FastifyReply): Promise<void> {
    await reply
      .type('application/json; charset=utf-8')
      .send(JSON.stringify(await this.pins.list()));
  }

  /** `PUT /_narwhal/pins/<hash or store path base name>`. */
  @Put(':path')
  async pin(
    @Param('path') path: string,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    const by = tokenNameOf(req) ?? 'unknown';
    const pinned = await this.pins.pin(path, by);
    const { paths, storedBytes } = pinned.closure;
    this.logger.log(
      `pinned ${pinned.storePath} (closure: ${paths} paths, ${storedBytes} bytes) with token "${by}"`,
    );
    await reply.type('application/json; charset=utf-8').send(JSON.stringify(pinned));
  }

  @Delete(':path')
  async unpin(
    @Param('path') path: string,
    @Req() req: FastifyRequest,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    await this.pins.unpin(path);
    this.logger.log(`unpinned ${path} with token "${tokenNameOf(req) ?? 'unknown'}"`);
    await reply.type('text/plain; charset=utf-8').send('unpinned\n');
  }
}
