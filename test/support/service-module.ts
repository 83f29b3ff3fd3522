import type { Provider } from '@nestjs/common';
import { Test, type TestingModule } from '@nestjs/testing';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach } from 'vitest';
import { buildConfig, type AppConfig, type RawSettings } from '../../src/config/app-config';
import { ConfigModule } from '../../src/config/config.module';
import { DatabaseModule } from '../../src/database/database.module';
import { NarFileRepository } from '../../src/database/nar-file.repository';
import { NarInfoRepository } from '../../src/database/narinfo.repository';
import { InstancesModule } from '../../src/instances/instances.module';
import { LOCKER, type Locker } from '../../src/locking/locker';
import { LockingModule } from '../../src/locking/locking.module';
import { MetricsModule } from '../../src/metrics/metrics.module';
import type { NarInfo } from '../../src/nix/narinfo';
import { SigningModule } from '../../src/signing/signing.module';
import { NAR_STORE, type NarStore } from '../../src/storage/nar-store';
import { StorageModule } from '../../src/storage/storage.module';
import { UpstreamModule } from '../../src/upstream/upstream.module';
import type { FakeUpstream } from './fake-upstream';
import { HOSTNAME } from './narwhal-app';
import type { StorePathFixture } from './store-paths';
import { upstreamPair, type UpstreamPair } from './two-upstreams';

/**
 * Service-level ("medium") tests: a Nest testing module with the real providers of the services
 * under test, on what narwhal runs on by default — a SQLite database in a temporary data path,
 * migrated by DatabaseModule as at start; the filesystem NarStore under it; the LocalLocker; a
 * signing key generated there — in front of real local upstream servers. Only HTTP is left out.
 */
export class ServiceModule {
  private constructor(
    readonly module: TestingModule,
    readonly config: AppConfig,
    readonly dataPath: string,
  ) {}

  /** Compiles and initialises a module of the infrastructure modules plus `providers`. */
  static async create(settings: RawSettings, providers: Provider[]): Promise<ServiceModule> {
    const dataPath = await mkdtemp(join(tmpdir(), 'narwhal-service-'));
    try {
      const config = buildConfig(
        { 'cache-data-path': dataPath, 'cache-hostname': HOSTNAME, ...settings },
        dataPath,
      );
      const module = await Test.createTestingModule({
        imports: [
          ConfigModule.forRoot(config),
          DatabaseModule,
          MetricsModule.forRoot(config.metrics),
          LockingModule,
          InstancesModule,
          StorageModule,
          SigningModule,
          UpstreamModule,
        ],
        providers,
      }).compile();
      await module.init();
      return new ServiceModule(module, config, dataPath);
    } catch (e) {
      await rm(dataPath, { recursive: true, force: true });
      throw e;
    }
  }

  /** The module's instance of a provider (the same one the services under test were given). */
  get<T>(token: abstract new (...args: never[]) => T): T {
    return this.module.get<T>(token);
  }

  get locker(): Locker {
    return this.module.get<Locker>(LOCKER);
  }

  get store(): NarStore {
    return this.module.get<NarStore>(NAR_STORE);
  }

  get narInfos(): NarInfoRepository {
    return this.get(NarInfoRepository);
  }

  get narFiles(): NarFileRepository {
    return this.get(NarFileRepository);
  }

  /** Runs the shutdown hooks (database, store, locker, upstream pools) and deletes the data path. */
  async close(): Promise<void> {
    try {
      await this.module.close();
    } finally {
      await rm(this.dataPath, { recursive: true, force: true });
    }
  }
}

/** An UpstreamPair and, for every test, a fresh ServiceModule in front of it. */
export interface ServiceTestbed extends Omit<UpstreamPair, 'settings'> {
  /** This test's module: its own database, store, locker and signing key. */
  readonly module: ServiceModule;
  /**
   * Records `f`'s narinfo (or `narInfo`, whose URL is relative) and its nar_files row as the
   * narinfo flow does once it has fetched and verified them from `from`.
   */
  recordNarInfo(f: StorePathFixture, from: FakeUpstream, narInfo?: NarInfo): Promise<void>;
}

/**
 * Registers, for the calling file (or describe), the hooks that start an UpstreamPair (beforeAll)
 * and build a ServiceModule of `providers` in front of it before each test (closed after it), with
 * the pair's settings plus `settings`.
 */
export function useServiceModule(
  providers: Provider[],
  settings: RawSettings = {},
): ServiceTestbed {
  const { settings: pairSettings, ...pair } = upstreamPair();
  const upstreams = [pair.primary, pair.secondary];
  let current: ServiceModule | undefined;

  beforeAll(async () => {
    for (const u of upstreams) await u.listen();
  });
  afterAll(async () => {
    for (const u of upstreams) await u.close();
  });
  beforeEach(async () => {
    current = await ServiceModule.create({ ...pairSettings(), ...settings }, providers);
  });
  afterEach(async () => {
    for (const u of upstreams) {
      u.clearFaults();
      u.fallback = null;
    }
    const m = current;
    current = undefined;
    await m?.close();
  });

  return {
    ...pair,
    get module(): ServiceModule {
      if (!current) throw new Error('the service module exists only inside a test');
      return current;
    },
    async recordNarInfo(f, from, narInfo = f.narInfo) {
      await this.module.narInfos.save({
        hash: f.hash,
        narInfo,
        narKey: f.narName,
        upstreamUrl: from.url,
        narUpstreamUrl: `${from.url}/${narInfo.url}`,
      });
    },
  };
}
