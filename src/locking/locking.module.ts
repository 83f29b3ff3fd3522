import { Inject, Module, type OnApplicationShutdown } from '@nestjs/common';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { MetricsService } from '../metrics/metrics.service';
import { LocalLocker } from './local/local-locker';
import { LOCKER, type Locker } from './locker';
import { LocalNotices, NOTICES, type Notices } from './notices';

/** Picks the Locker implementation from configuration. */
export async function createLocker(config: AppConfig, metrics?: MetricsService): Promise<Locker> {
  const lock = config.lock;
  switch (lock.kind) {
    case 'local':
      return new LocalLocker();
    case 'redis': {
      // Loaded only when used (ioredis costs ~15 MB of memory).
      const { DegradableLocker } = await import('./redis/degradable-locker');
      const { RedisLocker } = await import('./redis/redis-locker');
      const locker = new DegradableLocker(
        new RedisLocker(lock),
        new LocalLocker(),
        lock.allowDegraded,
      );
      metrics?.watchDegradedLockOperations(() => locker.degradedOperations);
      return locker;
    }
    default: {
      const unknown: never = lock;
      throw new Error(`unknown lock backend ${String(unknown)}`);
    }
  }
}

/** Notices to every instance: through Redis with Redis locks, else within the process. */
export async function createNotices(config: AppConfig): Promise<Notices> {
  if (config.lock.kind === 'local') return new LocalNotices();
  const { RedisNotices } = await import('./redis/redis-notices');
  return new RedisNotices(config.lock);
}

@Module({
  providers: [
    { provide: LOCKER, inject: [APP_CONFIG, MetricsService], useFactory: createLocker },
    { provide: NOTICES, inject: [APP_CONFIG], useFactory: createNotices },
  ],
  exports: [LOCKER, NOTICES],
})
export class LockingModule implements OnApplicationShutdown {
  constructor(
    @Inject(LOCKER) private readonly locker: Locker,
    @Inject(NOTICES) private readonly notices: Notices,
  ) {}

  async onApplicationShutdown(): Promise<void> {
    await this.locker.close();
    await this.notices.close();
  }
}
