import { Injectable, type OnModuleInit } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { FrontDoor, type HotAnswer } from '../common/front-door';
import { MetricsService } from '../metrics/metrics.service';
import { NAR_CONTENT_TYPE } from './nar.controller';
import { NarService } from './nar.service';

const PREFIX = '/nar/';
const HEADERS = [
  'content-type',
  NAR_CONTENT_TYPE,
  'x-narwhal-source',
  'storage',
  'accept-ranges',
  'bytes',
];

/**
 * `GET /nar/<name>` of a small NAR served lately: answered from memory, with the same headers as the
 * controller's answer from storage (see FrontDoor).
 */
@Injectable()
export class NarHotPath implements OnModuleInit {
  constructor(
    private readonly adapterHost: HttpAdapterHost,
    private readonly nars: NarService,
    private readonly metrics: MetricsService,
  ) {}

  onModuleInit(): void {
    FrontDoor.of(this.adapterHost.httpAdapter.getHttpServer())?.addRoute({
      route: '/nar/:name',
      answer: (url) => this.answer(url),
    });
  }

  /** `/nar/<name>`: only names of NARs kept in memory are found, so nothing else needs checking. */
  private answer(url: string): HotAnswer | undefined {
    if (!url.startsWith(PREFIX)) return undefined;
    const body = this.nars.rememberedBytes(url.slice(PREFIX.length));
    if (!body) return undefined;
    this.metrics.countServedBytes('storage', body);
    return { body, headers: HEADERS };
  }
}
