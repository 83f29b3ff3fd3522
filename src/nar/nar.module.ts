import { Module } from '@nestjs/common';
import { LockingModule } from '../locking/locking.module';
import { StorageModule } from '../storage/storage.module';
import { UpstreamModule } from '../upstream/upstream.module';
import { NarController } from './nar.controller';
import { NarService } from './nar.service';

@Module({
  imports: [LockingModule, StorageModule, UpstreamModule],
  controllers: [NarController],
  providers: [NarService],
  exports: [NarService],
})
export class NarModule {}
