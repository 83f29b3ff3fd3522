import { Module } from '@nestjs/common';
import { LockingModule } from '../locking/locking.module';
import { SigningModule } from '../signing/signing.module';
import { StorageModule } from '../storage/storage.module';
import { UpstreamModule } from '../upstream/upstream.module';
import { ActiveDownloads } from './active-downloads';
import { NarController } from './nar.controller';
import { NarFetcher } from './nar-fetcher';
import { NarHotPath } from './nar-hot-path';
import { NarService } from './nar.service';
import { PeerClient } from './peer-client';
import { StallGuard } from './stall-guard';
import { StoredNarCheck } from './stored-nar-check';
import { RememberedNars } from './stored-nar-memory';
import { StoredNars } from './stored-nars';
import { VerificationModule } from './verification/verification.module';

@Module({
  imports: [LockingModule, SigningModule, StorageModule, UpstreamModule, VerificationModule],
  controllers: [NarController],
  providers: [
    NarService,
    StoredNars,
    NarFetcher,
    ActiveDownloads,
    PeerClient,
    StoredNarCheck,
    StallGuard,
    RememberedNars,
    NarHotPath,
  ],
  exports: [NarService, StoredNarCheck, ActiveDownloads, PeerClient, RememberedNars],
})
export class NarModule {}
