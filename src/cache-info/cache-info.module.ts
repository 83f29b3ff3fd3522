import { Module } from '@nestjs/common';
import { SigningModule } from '../signing/signing.module';
import { CacheInfoController } from './cache-info.controller';

/** What a client learns about the cache itself: `/nix-cache-info`, `/pubkey` and `/`. */
@Module({
  imports: [SigningModule],
  controllers: [CacheInfoController],
})
export class CacheInfoModule {}
