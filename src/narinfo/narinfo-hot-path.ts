import { Injectable, type OnModuleInit } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import type { FastifyInstance } from 'fastify';
import { installHotPath, type HotAnswer } from '../common/hot-path';
import { NARINFO_CONTENT_TYPE, NARINFO_SUFFIX } from './narinfo.controller';
import { NarInfoService } from './narinfo.service';

const HEADERS = { 'content-type': NARINFO_CONTENT_TYPE };

/** `GET /<hash>.narinfo` of a narinfo served lately: answered from memory (see installHotPath). */
@Injectable()
export class NarInfoHotPath implements OnModuleInit {
  constructor(
    private readonly adapterHost: HttpAdapterHost,
    private readonly narinfos: NarInfoService,
  ) {}

  onModuleInit(): void {
    const fastify = this.adapterHost.httpAdapter.getInstance<FastifyInstance>();
    installHotPath(fastify, '/:file', (file) => this.answer(file), 'file');
  }

  private answer(file: string): HotAnswer | undefined {
    if (!file.endsWith(NARINFO_SUFFIX)) return undefined;
    const body = this.narinfos.recentBytes(file.slice(0, -NARINFO_SUFFIX.length));
    return body && { body, headers: HEADERS };
  }
}
