import { Injectable, type OnModuleInit } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { FrontDoor, type HotAnswer } from '../common/front-door';
import { NARINFO_CONTENT_TYPE, NARINFO_SUFFIX } from './narinfo.controller';
import { NarInfoService } from './narinfo.service';

const HEADERS = ['content-type', NARINFO_CONTENT_TYPE];

/** `GET /<hash>.narinfo` of a narinfo served lately: answered from memory (see FrontDoor). */
@Injectable()
export class NarInfoHotPath implements OnModuleInit {
  constructor(
    private readonly adapterHost: HttpAdapterHost,
    private readonly narinfos: NarInfoService,
  ) {}

  onModuleInit(): void {
    FrontDoor.of(this.adapterHost.httpAdapter.getHttpServer())?.addRoute({
      route: '/:file',
      answer: (url) => this.answer(url),
      // The controller's HEAD looks the narinfo up like its GET (counted, and a prefetch signal).
      head: true,
    });
  }

  /** `/<hash>.narinfo`: only hashes kept in memory are found, so nothing else needs checking. */
  private answer(url: string): HotAnswer | undefined {
    if (!url.endsWith(NARINFO_SUFFIX) || url.charCodeAt(0) !== 0x2f) return undefined;
    const body = this.narinfos.recentBytes(url.slice(1, -NARINFO_SUFFIX.length));
    return body && { body, headers: HEADERS };
  }
}
