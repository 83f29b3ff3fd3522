import { Module } from '@nestjs/common';
import { LockingModule } from '../locking/locking.module';
import { SigningModule } from '../signing/signing.module';
import { UpstreamModule } from '../upstream/upstream.module';
import { CacheInfoController } from './cache-info.controller';
import { NarInfoController } from './narinfo.controller';
import { NarInfoService } from './narinfo.service';

@Module({
  imports: [LockingModule, SigningModule, UpstreamModule],
  controllers: [CacheInfoController, NarInfoController],
  providers: [NarInfoService],
})
export class NarInfoModule {}
