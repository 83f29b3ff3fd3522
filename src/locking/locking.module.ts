import { Inject, Module, type OnApplicationShutdown } from '@nestjs/common';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { LocalLocker } from './local/local-locker';
import { LOCKER, type Locker } from './locker';

/** Picks the Locker implementation from configuration. */
export function createLocker(config: AppConfig): Locker {
  const lock = config.lock;
  switch (lock.kind) {
    case 'local':
      return new LocalLocker();
    case 'redis':
      throw new Error('the Redis locker is not built yet');
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
