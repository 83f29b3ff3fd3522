import { Controller, Get, Head, Header, Headers, Inject, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { Access } from '../common/access';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { SigningService } from '../signing/signing.service';
import { prefersHtml, sendAsset, StatusPage } from '../status/status-page';
import { VERSION } from '../version';

/** The body of `/nix-cache-info`. */
export function cacheInfoText(config: Pick<AppConfig, 'storeDir' | 'priority'>): string {
  return `StoreDir: ${config.storeDir}\nWantMassQuery: 1\nPriority: ${config.priority}\n`;
}

/**
 * What a client learns about the cache itself. HEAD answers like GET without the body (tools probe
 * `nix-cache-info` that way); without its own routes it would fall through to the narinfo route.
 * `/` is JSON for programs and the status page for a browser (an Accept header that asks for HTML).
 */
@Controller()
export class CacheInfoController {
  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    private readonly signing: SigningService,
    private readonly statusPage: StatusPage,
  ) {}

  @Get('nix-cache-info')
  @Header('content-type', 'text/x-nix-cache-info')
  cacheInfo(): string {
    return cacheInfoText(this.config);
  }

  /** Open even when reads need a token: the key is public, and setting a client up needs it. */
  @Get('pubkey')
  @Access('public')
  @Header('content-type', 'text/plain; charset=utf-8')
  pubkey(): string {
    return this.signing.publicKey;
  }

  @Get()
  async root(
    @Headers('accept') accept: string | undefined,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    await this.answerRoot(reply, accept, false);
  }

  about(): { hostname: string; publicKey: string; version: string } {
    return { hostname: this.config.hostname, publicKey: this.signing.publicKey, version: VERSION };
  }

  // HEAD: the GET answer's type and length, no body (an explicit HEAD route gets no help from Fastify).
  @Head('nix-cache-info')
  async cacheInfoHead(@Res() reply: FastifyReply): Promise<void> {
    await headOf(reply, 'text/x-nix-cache-info', this.cacheInfo());
  }

  @Head('pubkey')
  @Access('public')
  async pubkeyHead(@Res() reply: FastifyReply): Promise<void> {
    await headOf(reply, 'text/plain; charset=utf-8', this.pubkey());
  }

  @Head()
  async rootHead(
    @Headers('accept') accept: string | undefined,
    @Res() reply: FastifyReply,
  ): Promise<void> {
    await this.answerRoot(reply, accept, true);
  }

  private async answerRoot(
    reply: FastifyReply,
    accept: string | undefined,
    head: boolean,
  ): Promise<void> {
    void reply.header('vary', 'Accept');
    if (prefersHtml(accept)) {
      await sendAsset(reply, this.statusPage.root, { head, cacheControl: 'no-cache' });
      return;
    }
    const json = JSON.stringify(this.about());
    if (head) await headOf(reply, 'application/json; charset=utf-8', json);
    else await reply.type('application/json; charset=utf-8').send(json);
  }
}

async function headOf(reply: FastifyReply, type: string, body: string): Promise<void> {
  await reply.type(type).header('content-length', Buffer.byteLength(body)).send();
}
