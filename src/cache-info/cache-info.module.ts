import { Module } from '@nestjs/common';
import { SigningModule } from '../signing/signing.module';
import { StatusModule } from '../status/status.module';
import { CacheInfoController } from './cache-info.controller';

/** What a client learns about the cache itself: `/nix-cache-info`, `/pubkey` and `/` (JSON, or the status page for a browser). */
@Module({
  imports: [SigningModule, StatusModule],
  controllers: [CacheInfoController],
})
export class CacheInfoModule {}
