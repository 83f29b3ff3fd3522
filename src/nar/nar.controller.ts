import { Controller, Get, Head, Headers, Param, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import type { OutgoingHttpHeaders } from 'node:http';
import { Access } from '../common/access';
import { NotFoundError } from '../common/errors';
import { MetricsService } from '../metrics/metrics.service';
import { InvalidNarNameError } from '../nix/errors';
import { parseNarFileName } from '../nix/compression';
import { narHead, type NarResponse } from './nar-response';
import { NarService } from './nar.service';
import { PEER_DOWNLOADS_PATH, PeerClient } from './peer-client';
import { isDirectBody, type DirectBody } from './send-chunks';
import { StallGuard } from './stall-guard';

@Controller()
export class NarController {
  constructor(
    private readonly nars: NarService,
    private readonly peers: PeerClient,
    private readonly stalls: StallGuard,
    private readonly metrics: MetricsService,
  ) {}

  @Get('nar/:name')
  async get(
    @Param('name') name: string,
    @Headers('range') range: string | undefined,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    const nar = await this.nars.get(name, range);
    setHead(reply, nar);
    this.stalls.watch(reply.raw);
    if (isDirectBody(nar.body)) {
      await nar.body.ready(); // a download that fails before its first byte is an error answer
      await this.sendDirect(reply, nar.body, nar.source);
      return;
    }
    // A stream error after the headers makes Fastify destroy the socket: no clean end for bad bytes.
    const body = Buffer.isBuffer(nar.body)
      ? this.metrics.countServedBytes(nar.source, nar.body)
      : this.metrics.countServed(nar.source, nar.body);
    await reply.send(body);
  }

  /**
   * Sends a stored file or a running download past Fastify's stream handling (see DirectBody): the
   * head as Fastify would write it (status and every header set so far, the request id's too), then
   * the bytes. Fastify's onResponse hooks and the access line still run when the response finishes
   * or closes.
   */
  private async sendDirect(
    reply: FastifyReply,
    body: DirectBody,
    source: NarResponse['source'],
  ): Promise<void> {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(reply.statusCode, reply.getHeaders() as OutgoingHttpHeaders);
    await body.sendTo(res, (bytes) => this.metrics.countServedBytes(source, bytes));
  }

  @Head('nar/:name')
  async head(@Param('name') name: string, @Res() reply: FastifyReply): Promise<void> {
    const { length } = await this.nars.head(name);
    setHead(reply, { length });
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

  /**
   * For other narwhal instances: stream a download this instance is running (404 if none). Anyone
   * else — and everyone, on a single instance — gets the same 404 as for an unknown path, so the
   * endpoint says nothing about what is being downloaded.
   */
  @Get(`${PEER_DOWNLOADS_PATH}/:name`)
  @Access('public') // not a client endpoint: instances prove themselves with their own secret
  async peer(
    @Param('name') name: string,
    @Headers('range') range: string | undefined,
    @Headers('authorization') authorization: string | undefined,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    if (!this.peers.accepts(authorization)) throw new NotFoundError('not found');
    parseNarFileName(name);
    const running = this.nars.streamForPeer(name, range);
    if (!running) throw new NotFoundError(`no download of ${name} is running here`);
    setHead(reply, running);
    this.stalls.watch(reply.raw);
    await reply.send(running.body);
  }
}

/** Sets the status and headers of a NAR answer (see narHead). */
function setHead(reply: FastifyReply, nar: Parameters<typeof narHead>[0]): void {
  const { status, headers } = narHead(nar);
  void reply.code(status);
  for (let i = 0; i < headers.length; i += 2) void reply.header(headers[i], headers[i + 1]);
}
