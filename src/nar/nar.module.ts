import { Module } from '@nestjs/common';
import { LockingModule } from '../locking/locking.module';
import { StorageModule } from '../storage/storage.module';
import { UpstreamModule } from '../upstream/upstream.module';
import { ActiveDownloads } from './active-downloads';
import { NarController } from './nar.controller';
import { NarFetcher } from './nar-fetcher';
import { NarService } from './nar.service';
import { PeerClient } from './peer-client';

@Module({
  imports: [LockingModule, StorageModule, UpstreamModule],
  controllers: [NarController],
  providers: [NarService, NarFetcher, ActiveDownloads, PeerClient],
  exports: [NarService, ActiveDownloads, PeerClient],
})
export class NarModule {}
