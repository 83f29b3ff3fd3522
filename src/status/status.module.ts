import { Module } from '@nestjs/common';
import { LockingModule } from '../locking/locking.module';
import { LruModule } from '../lru/lru.module';
import { NarModule } from '../nar/nar.module';
import { SigningModule } from '../signing/signing.module';
import { UpstreamModule } from '../upstream/upstream.module';
import { StatusController } from './status.controller';
import { StatusPage } from './status-page';
import { StatusService } from './status.service';

/** The status page for people (`/` in a browser, `/_narwhal/status`) and its JSON. */
@Module({
  imports: [LockingModule, LruModule, NarModule, SigningModule, UpstreamModule],
  controllers: [StatusController],
  providers: [StatusPage, StatusService],
  exports: [StatusPage],
})
export class StatusModule {}
