import { Module } from '@nestjs/common';
import { TerminusModule } from '@nestjs/terminus';
import { LockingModule } from '../locking/locking.module';
import { StorageModule } from '../storage/storage.module';
import { UpstreamModule } from '../upstream/upstream.module';
import { HealthController } from './health.controller';

@Module({
  imports: [TerminusModule, StorageModule, LockingModule, UpstreamModule],
  controllers: [HealthController],
})
export class HealthModule {}
