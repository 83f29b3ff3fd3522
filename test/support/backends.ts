import { reachableServer, type Dialect, type FreshDatabase } from '../database/database-servers';
import { S3rverFixture } from '../storage/s3rver';

/**
 * The database + storage combinations the end-to-end suite runs on. Each gives the environment that
 * points narwhal at it and a way to list the objects it stores, to prove nothing broken was kept.
 */
export interface Backend {
  /** Environment for the narwhal process. */
  env: Record<string, string>;
  /** Names of stored objects outside the data path (S3 keys), if any. */
  objectNames(): Promise<string[]>;
  close(): Promise<void>;
}

export interface BackendKind {
  name: string;
  /** Null when a service is unreachable outside CI (the suite is then skipped loudly). */
  start(): Promise<Backend | null>;
}

async function database(dialect: Dialect): Promise<FreshDatabase | null> {
  const server = await reachableServer(dialect); // throws under CI=true when unreachable
  return server ? server.createDatabase() : null;
}

function databaseEnv(db: FreshDatabase): Record<string, string> {
  const c = db.config;
  return c.kind === 'sqlite'
    ? { CACHE_DATABASE_URL: `sqlite:${c.path}` }
    : { CACHE_DATABASE_URL: c.url };
}

export const BACKENDS: BackendKind[] = [
  {
    name: 'SQLite + filesystem (embedded default)',
    start: () =>
      Promise.resolve({
        env: {},
        objectNames: () => Promise.resolve([]),
        close: () => Promise.resolve(),
      }),
  },
  {
    name: 'PostgreSQL + S3',
    async start() {
      const db = await database('postgres');
      if (!db) return null;
      const s3 = await S3rverFixture.start();
      const bucket = await s3.createBucket();
      const config = s3.storageConfig(bucket, '');
      return {
        env: {
          ...databaseEnv(db),
          CACHE_STORAGE_S3_BUCKET: bucket,
          CACHE_STORAGE_S3_ENDPOINT: s3.endpoint,
          CACHE_STORAGE_S3_REGION: config.region,
          CACHE_STORAGE_S3_ACCESS_KEY_ID: config.accessKeyId ?? '',
          CACHE_STORAGE_S3_SECRET_ACCESS_KEY: config.secretAccessKey ?? '',
          CACHE_STORAGE_S3_FORCE_PATH_STYLE: 'true',
          CACHE_STORAGE_S3_PREFIX: 'e2e/',
        },
        objectNames: () => s3.objectKeys(bucket),
        async close() {
          await s3.stop();
          await db.drop();
        },
      };
    },
  },
  {
    name: 'MariaDB + filesystem',
    async start() {
      const db = await database('mariadb');
      if (!db) return null;
      return {
        env: databaseEnv(db),
        objectNames: () => Promise.resolve([]),
        close: () => db.drop(),
      };
    },
  },
];
