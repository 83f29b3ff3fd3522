import { Module } from '@nestjs/common';
import { TerminusModule } from '@nestjs/terminus';
import { LockingModule } from '../locking/locking.module';
import { StorageModule } from '../storage/storage.module';
import { HealthController } from './health.controller';
import { UpstreamProbe } from './upstream-probe';

@Module({
  imports: [TerminusModule, StorageModule, LockingModule],
  controllers: [HealthController],
  providers: [UpstreamProbe],
})
export class HealthModule {}
