import {
  Inject,
  Injectable,
  Logger,
  type OnApplicationBootstrap,
  type OnApplicationShutdown,
} from '@nestjs/common';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { formatSize } from '../config/units';
import { MetricsService } from '../metrics/metrics.service';
import { NAR_STORE, type NarStore } from './nar-store';
import type { DiskSpace } from './spool-area';

/** How often the local disks are looked at. */
const CHECK_MS = 30_000;

/**
 * Watches the free space of the local disks narwhal writes to (the spool; the objects of a
 * filesystem store), so that a disk filling up shows in /readyz, the metrics and the log (once per
 * change) before a download fails on it.
 */
@Injectable()
export class DiskWatch implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger('storage');
  private last: DiskSpace[] = [];
  private low = false;
  private timer?: NodeJS.Timeout;

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    @Inject(NAR_STORE) private readonly store: NarStore,
    metrics: MetricsService,
  ) {
    metrics.watchDiskSpace(() => this.last);
  }

  onApplicationBootstrap(): void {
    void this.check();
    this.timer = setInterval(() => void this.check(), CHECK_MS);
    this.timer.unref();
  }

  onApplicationShutdown(): void {
    clearInterval(this.timer);
  }

  /** Looks at the disks now; resolves what /readyz shows. */
  async check(): Promise<{ low: boolean; minFreeBytes: number; disks: DiskSpace[] }> {
    const minFreeBytes = this.config.minFreeSpace;
    try {
      this.last = await this.store.localSpace();
    } catch (e) {
      this.logger.warn(`cannot read the free space of the local disk: ${(e as Error).message}`);
    }
    const low = this.last.some((d) => d.freeBytes < minFreeBytes);
    if (low && !this.low) {
      const worst = this.last.reduce((a, b) => (a.freeBytes <= b.freeBytes ? a : b));
      this.logger.warn(
        `low disk space: ${formatSize(worst.freeBytes)} free on ${worst.path} (${worst.area}), ` +
          `below --cache-min-free-space ${formatSize(minFreeBytes)}`,
      );
    } else if (!low && this.low) {
      this.logger.log('disk space is above --cache-min-free-space again');
    }
    this.low = low;
    return { low, minFreeBytes, disks: this.last };
  }
}
