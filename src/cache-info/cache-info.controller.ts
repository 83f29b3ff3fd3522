import { Controller, Get, Head, Header, Inject, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { SigningService } from '../signing/signing.service';
import { VERSION } from '../version';

/**
 * What a client learns about the cache itself. HEAD answers like GET without the body (tools probe
 * `nix-cache-info` that way); without its own routes it would fall through to the narinfo route.
 */
@Controller()
export class CacheInfoController {
  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    private readonly signing: SigningService,
  ) {}

  @Get('nix-cache-info')
  @Header('content-type', 'text/x-nix-cache-info')
  cacheInfo(): string {
    return `StoreDir: ${this.config.storeDir}\nWantMassQuery: 1\nPriority: ${this.config.priority}\n`;
  }

  @Get('pubkey')
  @Header('content-type', 'text/plain; charset=utf-8')
  pubkey(): string {
    return this.signing.publicKey;
  }

  @Get()
  about(): { hostname: string; publicKey: string; version: string } {
    return { hostname: this.config.hostname, publicKey: this.signing.publicKey, version: VERSION };
  }

  // HEAD: the GET answer's type and length, no body (an explicit HEAD route gets no help from Fastify).
  @Head('nix-cache-info')
  async cacheInfoHead(@Res() reply: FastifyReply): Promise<void> {
    await headOf(reply, 'text/x-nix-cache-info', this.cacheInfo());
  }

  @Head('pubkey')
  async pubkeyHead(@Res() reply: FastifyReply): Promise<void> {
    await headOf(reply, 'text/plain; charset=utf-8', this.pubkey());
  }

  @Head()
  async aboutHead(@Res() reply: FastifyReply): Promise<void> {
    await headOf(reply, 'application/json; charset=utf-8', JSON.stringify(this.about()));
  }
}

async function headOf(reply: FastifyReply, type: string, body: string): Promise<void> {
  await reply.type(type).header('content-length', Buffer.byteLength(body)).send();
}
