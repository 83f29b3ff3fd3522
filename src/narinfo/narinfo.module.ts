import { Module } from '@nestjs/common';
import { DocumentsModule } from '../documents/documents.module';
import { LockingModule } from '../locking/locking.module';
import { NarModule } from '../nar/nar.module';
import { SigningModule } from '../signing/signing.module';
import { UpstreamModule } from '../upstream/upstream.module';
import { NarInfoController } from './narinfo.controller';
import { NarInfoEvents } from './narinfo-events';
import { NarInfoHotPath } from './narinfo-hot-path';
import { NarInfoService } from './narinfo.service';

@Module({
  imports: [DocumentsModule, LockingModule, NarModule, SigningModule, UpstreamModule],
  controllers: [NarInfoController],
  providers: [NarInfoService, NarInfoEvents, NarInfoHotPath],
  exports: [NarInfoService, NarInfoEvents],
})
export class NarInfoModule {}
