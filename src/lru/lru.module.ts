import { Module } from '@nestjs/common';
import { LockingModule } from '../locking/locking.module';
import { StorageModule } from '../storage/storage.module';
import { LruService } from './lru.service';

@Module({ imports: [LockingModule, StorageModule], providers: [LruService], exports: [LruService] })
export class LruModule {}
