import { Inject, Injectable, type OnModuleInit } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import type { ServerResponse } from 'node:http';
import { pipeline } from 'node:stream';
import { FrontDoor, type HotAnswer, type HotFile, type OpenHotFile } from '../common/front-door';
import { isPlainPath } from '../common/plain-path';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { MetricsService } from '../metrics/metrics.service';
import { NAR_CONTENT_TYPE, narHead } from './nar-response';
import { NarService } from './nar.service';
import { isDirectBody } from './send-chunks';
import { StoredNars } from './stored-nars';
import { openForLane, sendfileSupport } from './sendfile';
import { StallGuard } from './stall-guard';
import type { RememberedFile } from './stored-nar-memory';

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
 * `GET /nar/<name>` of a NAR served lately, with the same headers as the controller's answer from
 * storage (see FrontDoor): a small one from memory; a large one, in the fast lane, with sendfile.
 * Any other GET of a NAR without a Range header (from storage, a download, a peer) is answered by
 * the front door too, without Fastify and Nest (see ColdRoute), as the controller answers it.
 */
@Injectable()
export class NarHotPath implements OnModuleInit {
  constructor(
    private readonly adapterHost: HttpAdapterHost,
    private readonly nars: StoredNars,
    private readonly downloads: NarService,
    private readonly metrics: MetricsService,
    private readonly stalls: StallGuard,
    @Inject(APP_CONFIG) private readonly config: AppConfig,
  ) {}

  onModuleInit(): void {
    const files = this.config.sendfile && sendfileSupport.available;
    const door = FrontDoor.of(this.adapterHost.httpAdapter.getHttpServer());
    door?.addRoute({
      route: '/nar/:name',
      answer: (url) => this.answer(url),
      file: files ? (url) => this.file(url) : undefined,
    });
    door?.addColdRoute({
      route: '/nar/:name',
      takes: (method, url) =>
        method === 'GET' && url.startsWith(PREFIX) && isPlainPath(url, PREFIX.length),
      serve: (_method, url, res) => this.serve(url.slice(PREFIX.length), res),
    });
  }

  /** NarController's GET without a Range header, for a request the front door took. */
  private async serve(name: string, res: ServerResponse): Promise<void> {
    const nar = await this.downloads.get(name);
    const { status, headers: head } = narHead(nar);
    this.stalls.watch(res);
    const { body, source } = nar;
    if (isDirectBody(body)) {
      await body.ready(); // a download that fails before its first byte is an error answer
      res.writeHead(status, head);
      await body.sendTo(res, (bytes) => this.metrics.countServedBytes(source, bytes));
    } else if (Buffer.isBuffer(body)) {
      res.writeHead(status, head);
      res.end(this.metrics.countServedBytes(source, body));
    } else {
      res.writeHead(status, head);
      // An error after the head cuts the connection: no clean end for bad bytes.
      pipeline(this.metrics.countServed(source, body), res, () => undefined);
    }
  }

  /** `/nar/<name>`: only names of NARs kept in memory are found, so nothing else needs checking. */
  private answer(url: string): HotAnswer | undefined {
    if (!url.startsWith(PREFIX)) return undefined;
    const body = this.nars.rememberedBytes(url.slice(PREFIX.length));
    if (!body) return undefined;
    this.metrics.countServedBytes('storage', body);
    return { body, headers: HEADERS };
  }

  /** `/nar/<name>` of a large NAR this instance served from storage lately (names as above). */
  private file(url: string): HotFile | undefined {
    if (!url.startsWith(PREFIX)) return undefined;
    const found = this.nars.rememberedFile(url.slice(PREFIX.length));
    if (!found) return undefined;
    return { size: found.size, headers: HEADERS, open: () => this.open(found) };
  }

  /** Opens the file for sendfile, counting what it sends (see openForLane). */
  private async open(found: RememberedFile): Promise<OpenHotFile | undefined> {
    const stallMs = this.stalls.stallTimeoutMs;
    const opened = await openForLane(() => found.open(), found.size, stallMs);
    if (!opened) return undefined;
    return {
      send: async (socketFd, signal) => {
        const result = await opened.send(socketFd, signal);
        if (result.sent > 0) this.metrics.countServedBytes('storage', result.sent);
        if (result.failed === 'ETIMEDOUT') this.stalls.noteDropped(stallMs);
        return result;
      },
      close: () => opened.close(),
    };
  }
}
