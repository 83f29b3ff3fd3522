import { Module } from '@nestjs/common';
import { SigningModule } from '../signing/signing.module';
import { StatusModule } from '../status/status.module';
import { CacheInfoHotPath } from './cache-info-hot-path';
import { CacheInfoController } from './cache-info.controller';

/** What a client learns about the cache itself: `/nix-cache-info`, `/pubkey` and `/` (JSON, or the status page for a browser). */
@Module({
  imports: [SigningModule, StatusModule],
  controllers: [CacheInfoController],
  providers: [CacheInfoHotPath],
})
export class CacheInfoModule {}
