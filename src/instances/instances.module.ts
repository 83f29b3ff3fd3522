import { Global, Module } from '@nestjs/common';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { LockingModule } from '../locking/locking.module';
import { INSTANCE, makeInstance } from './instance';
import { InstanceLiveness } from './instance-liveness';
import { TakeoverLocks } from './takeover-locks';

/**
 * This instance's identity among the deployment's (URL and boot id), whether another one still
 * runs, and the locks that are taken over from a holder that is gone.
 */
@Global()
@Module({
  imports: [LockingModule],
  providers: [
    {
      provide: INSTANCE,
      inject: [APP_CONFIG],
      useFactory: (c: AppConfig) => makeInstance(c.selfUrl),
    },
    InstanceLiveness,
    TakeoverLocks,
  ],
  exports: [INSTANCE, InstanceLiveness, TakeoverLocks],
})
export class InstancesModule {}
