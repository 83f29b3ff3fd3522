import {
  Inject,
  Injectable,
  Logger,
  type OnApplicationBootstrap,
  type OnApplicationShutdown,
} from '@nestjs/common';
import type { ServerResponse } from 'node:http';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { MetricsService } from '../metrics/metrics.service';

interface Watched {
  sent: number;
  /** Since when the client has taken no byte while bytes were waiting for it. */
  since: number;
}

/**
 * Drops NAR clients that stop reading: a client that has taken no byte for
 * --cache-client-stall-timeout while the response had bytes waiting for it is cut, so that what it
 * holds (stream buffers, a reader of a running download) is freed. A client waiting for a slow
 * upstream is not stalled: nothing is waiting for it then.
 */
@Injectable()
export class StallGuard implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger('nar');
  private readonly watched = new Map<ServerResponse, Watched>();
  private timer?: NodeJS.Timeout;
  private readonly timeoutMs: number;

  constructor(
    @Inject(APP_CONFIG) config: AppConfig,
    private readonly metrics: MetricsService,
  ) {
    this.timeoutMs = config.clientStallTimeoutMs;
  }

  /** Watches `res` until it closes. */
  watch(res: ServerResponse): void {
    if (this.timeoutMs <= 0 || res.writableEnded) return;
    this.watched.set(res, { sent: res.socket?.bytesWritten ?? 0, since: Date.now() });
    res.once('close', () => this.watched.delete(res));
  }

  onApplicationBootstrap(): void {
    if (this.timeoutMs <= 0) return;
    this.timer = setInterval(() => this.sweep(), Math.min(5_000, this.timeoutMs / 4));
    this.timer.unref();
  }

  onApplicationShutdown(): void {
    clearInterval(this.timer);
  }

  private sweep(): void {
    const now = Date.now();
    for (const [res, w] of this.watched) {
      const sent = res.socket?.bytesWritten ?? w.sent;
      if (sent !== w.sent || !res.writableNeedDrain) {
        w.sent = sent;
        w.since = now;
        continue;
      }
      if (now - w.since < this.timeoutMs) continue;
      this.drop(res, now - w.since);
    }
  }

  /**
   * Cuts `res`, whose client read nothing for `idleMs`: counted and logged. Also called for a
   * response whose bytes the kernel sends (sendfile), which this guard cannot see: the transfer
   * itself notices the stall.
   */
  drop(res: ServerResponse, idleMs: number): void {
    this.watched.delete(res);
    this.noteDropped(idleMs);
    res.destroy();
  }

  /** Counts and logs a client cut for reading nothing for `idleMs` (by whoever cut it). */
  noteDropped(idleMs: number): void {
    this.metrics.clientDropped('stalled');
    this.logger.debug(`dropped a client that read nothing for ${idleMs} ms`);
  }

  /** A client that takes no byte for this long while bytes wait for it is cut; 0: never. */
  get stallTimeoutMs(): number {
    return this.timeoutMs;
  }
}
