import { Inject, Module, type OnApplicationShutdown } from '@nestjs/common';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { LocalLocker } from './local/local-locker';
import { LOCKER, type Locker } from './locker';
import { DegradableLocker } from './redis/degradable-locker';
import { RedisLocker } from './redis/redis-locker';

/** Picks the Locker implementation from configuration. */
export function createLocker(config: AppConfig): Locker {
  const lock = config.lock;
  switch (lock.kind) {
    case 'local':
      return new LocalLocker();
    case 'redis':
      return new DegradableLocker(new RedisLocker(lock), new LocalLocker(), lock.allowDegraded);
    default: {
      const unknown: never = lock;
      throw new Error(`unknown lock backend ${String(unknown)}`);
    }
  }
}

@Module({
  providers: [{ provide: LOCKER, inject: [APP_CONFIG], useFactory: createLocker }],
  exports: [LOCKER],
})
export class LockingModule implements OnApplicationShutdown {
  constructor(@Inject(LOCKER) private readonly locker: Locker) {}

  async onApplicationShutdown(): Promise<void> {
    await this.locker.close();
  }
}
