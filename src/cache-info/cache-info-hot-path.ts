import { Inject, Injectable, type OnModuleInit } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { FrontDoor, type HotAnswer } from '../common/front-door';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { cacheInfoText } from './cache-info.controller';

const PATH = '/nix-cache-info';

/**
 * `GET /nix-cache-info` answered by the front door (and so by the fast lane): it is the first
 * request of every `nix copy` and Nix asks it on the same connection as the rest, so a connection
 * that began with it would otherwise be handed to node:http for all that follows.
 */
@Injectable()
export class CacheInfoHotPath implements OnModuleInit {
  private readonly answer: HotAnswer;

  constructor(
    private readonly adapterHost: HttpAdapterHost,
    @Inject(APP_CONFIG) config: AppConfig,
  ) {
    this.answer = {
      body: Buffer.from(cacheInfoText(config)),
      headers: ['content-type', 'text/x-nix-cache-info'],
    };
  }

  onModuleInit(): void {
    FrontDoor.of(this.adapterHost.httpAdapter.getHttpServer())?.addRoute({
      route: PATH,
      answer: (url) => (url === PATH ? this.answer : undefined),
      head: true,
    });
  }
}
