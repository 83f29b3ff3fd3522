import { Injectable, type OnModuleInit } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import type { ServerResponse } from 'node:http';
import { FrontDoor, type HotAnswer } from '../common/front-door';
import { isPlainPath } from '../common/plain-path';
import { NARINFO_CONTENT_TYPE, NARINFO_SUFFIX } from './narinfo.controller';
import { NarInfoService } from './narinfo.service';

const HEADERS = ['content-type', NARINFO_CONTENT_TYPE];

/**
 * `GET /<hash>.narinfo` of a narinfo served lately: answered from memory (see FrontDoor). Any other
 * GET or HEAD of a narinfo is looked up (database, upstreams) by the front door too, without Fastify
 * and Nest (see ColdRoute): the answer and its errors are the controller's.
 */
@Injectable()
export class NarInfoHotPath implements OnModuleInit {
  constructor(
    private readonly adapterHost: HttpAdapterHost,
    private readonly narinfos: NarInfoService,
  ) {}

  onModuleInit(): void {
    const door = FrontDoor.of(this.adapterHost.httpAdapter.getHttpServer());
    door?.addRoute({
      route: '/:file',
      answer: (url) => this.answer(url),
      // The controller's HEAD looks the narinfo up like its GET (counted, and a prefetch signal).
      head: true,
    });
    door?.addColdRoute({
      route: '/:file',
      takes: (_method, url) =>
        url.charCodeAt(0) === 0x2f && url.endsWith(NARINFO_SUFFIX) && isPlainPath(url, 1),
      serve: (method, url, res) => this.serve(method, url, res),
    });
  }

  /** NarInfoController's GET and HEAD, for a request the front door took. */
  private async serve(method: 'GET' | 'HEAD', url: string, res: ServerResponse): Promise<void> {
    const body = Buffer.from(await this.narinfos.get(url.slice(1, -NARINFO_SUFFIX.length)));
    res.writeHead(200, [...HEADERS, 'content-length', String(body.length)]);
    res.end(method === 'HEAD' ? undefined : body);
  }

  /** `/<hash>.narinfo`: only hashes kept in memory are found, so nothing else needs checking. */
  private answer(url: string): HotAnswer | undefined {
    if (!url.endsWith(NARINFO_SUFFIX) || url.charCodeAt(0) !== 0x2f) return undefined;
    const body = this.narinfos.recentBytes(url.slice(1, -NARINFO_SUFFIX.length));
    return body && { body, headers: HEADERS };
  }
}
