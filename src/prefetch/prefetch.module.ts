import { Module } from '@nestjs/common';
import { NarModule } from '../nar/nar.module';
import { NarInfoModule } from '../narinfo/narinfo.module';
import { UpstreamModule } from '../upstream/upstream.module';
import { PrefetchService } from './prefetch.service';

/** Fetching ahead of clients: narinfos of a closure, NARs of narinfos clients asked for. */
@Module({
  imports: [NarInfoModule, NarModule, UpstreamModule],
  providers: [PrefetchService],
  exports: [PrefetchService],
})
export class PrefetchModule {}
