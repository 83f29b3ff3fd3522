import { Module } from '@nestjs/common';
import { UpstreamProbe } from './upstream-probe';
import { UpstreamService } from './upstream.service';

/** The upstream caches: HTTP access for the flows, and background reachability for /readyz. */
@Module({ providers: [UpstreamService, UpstreamProbe], exports: [UpstreamService, UpstreamProbe] })
export class UpstreamModule {}
