import { Inject, Module, type OnApplicationShutdown } from '@nestjs/common';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { DiskWatch } from './disk-watch';
import { FilesystemNarStore } from './filesystem/filesystem-nar-store';
import { NAR_STORE, type NarStore } from './nar-store';

/** Picks the NarStore implementation from configuration. */
export async function createNarStore(config: AppConfig): Promise<NarStore> {
  const storage = config.storage;
  switch (storage.kind) {
    case 'fs': {
      const store = new FilesystemNarStore(storage.path, config.selfUrl);
      await store.init();
      return store;
    }
    case 's3': {
      // Loaded only when used: the AWS SDK costs ~20 MB of memory.
      const { S3NarStore } = await import('./s3/s3-nar-store');
      const store = new S3NarStore(storage, { instance: config.selfUrl });
      await store.init();
      return store;
    }
    default: {
      const unknown: never = storage;
      throw new Error(`unknown storage kind ${String(unknown)}`);
    }
  }
}

@Module({
  providers: [{ provide: NAR_STORE, inject: [APP_CONFIG], useFactory: createNarStore }, DiskWatch],
  exports: [NAR_STORE, DiskWatch],
})
export class StorageModule implements OnApplicationShutdown {
  constructor(@Inject(NAR_STORE) private readonly store: NarStore) {}

  async onApplicationShutdown(): Promise<void> {
    await this.store.close();
  }
}
