import { Injectable, type OnModuleInit } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import type { FastifyInstance } from 'fastify';
import { installHotPath, type HotAnswer } from '../common/hot-path';
import { MetricsService } from '../metrics/metrics.service';
import { NAR_CONTENT_TYPE } from './nar.controller';
import { NarService } from './nar.service';

/**
 * `GET /nar/<name>` of a small NAR served lately: answered from memory, with the same headers as the
 * controller's answer from storage (see installHotPath).
 */
@Injectable()
export class NarHotPath implements OnModuleInit {
  constructor(
    private readonly adapterHost: HttpAdapterHost,
    private readonly nars: NarService,
    private readonly metrics: MetricsService,
  ) {}

  onModuleInit(): void {
    const fastify = this.adapterHost.httpAdapter.getInstance<FastifyInstance>();
    installHotPath(fastify, '/nar/:name', (name) => this.answer(name), 'name');
  }

  private answer(name: string): HotAnswer | undefined {
    const body = this.nars.rememberedBytes(name);
    if (!body) return undefined;
    this.metrics.countServedBytes('storage', body);
    return {
      body,
      headers: {
        'content-type': NAR_CONTENT_TYPE,
        'x-narwhal-source': 'storage',
        'accept-ranges': 'bytes',
      },
    };
  }
}
