import { Controller, Get, Header, Inject } from '@nestjs/common';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { SigningService } from '../signing/signing.service';
import { VERSION } from '../version';

/** What a client learns about the cache itself. */
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
}
