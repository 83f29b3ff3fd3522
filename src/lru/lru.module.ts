import { Module } from '@nestjs/common';
import { LockingModule } from '../locking/locking.module';
import { NarModule } from '../nar/nar.module';
import { StorageModule } from '../storage/storage.module';
import { LruService } from './lru.service';

@Module({
  imports: [LockingModule, NarModule, StorageModule],
  providers: [LruService],
  exports: [LruService],
})
export class LruModule {}
