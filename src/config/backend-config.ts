import { resolve } from 'node:path';
import type { DatabaseConfig, LockConfig, LockTimings, StorageConfig } from './config-types';
import { ConfigError } from './config-error';
import { parseBool, parseHttpUrl, parseIntStrict } from './parsers';

/** Settings that choose and configure the backends: database, storage, locks. */

export function parseDatabaseUrl(cwd: string, poolMax: number) {
  return (s: string): DatabaseConfig => {
    const m = /^sqlite:(?:\/\/)?(.+)$/.exec(s);
    if (m) return { kind: 'sqlite', path: resolve(cwd, m[1]) };
    let u: URL;
    try {
      u = new URL(s);
    } catch {
      throw new Error('is not a URL (sqlite:<path>, postgresql://…, mysql://…)');
    }
    const kind = {
      'postgresql:': 'postgres',
      'postgres:': 'postgres',
      'mysql:': 'mysql',
      'mariadb:': 'mysql',
    }[u.protocol] as 'postgres' | 'mysql' | undefined;
    if (!kind)
      throw new Error(
        `unsupported database scheme "${u.protocol.slice(0, -1)}" (sqlite, postgresql, mysql)`,
      );
    if (!u.hostname) throw new Error('names no host');
    if (u.pathname.replace(/^\//, '') === '') throw new Error('names no database (…/dbname)');
    return { kind, url: s, poolMax };
  };
}

export type One = (name: string) => string | undefined;

export function lockConfig(one: One, parsed: Parsed, duration: (s: string) => number): LockConfig {
  const kind = parsed('cache-lock-backend', (v) => {
    if (v !== 'local' && v !== 'redis')
      throw new Error(`"${v}" is not a lock backend (local, redis)`);
    return v;
  });
  const timings: LockTimings = {
    downloadTtlMs: parsed('cache-lock-download-ttl', duration),
    lruTtlMs: parsed('cache-lock-lru-ttl', duration),
    retry: {
      maxAttempts: parsed('cache-lock-retry-max-attempts', (v) => parseIntStrict(v, 1, 1_000_000)),
      initialDelayMs: parsed('cache-lock-retry-initial-delay', duration),
      maxDelayMs: parsed('cache-lock-retry-max-delay', duration),
      jitter: parsed('cache-lock-retry-jitter', (v) => {
        const n = Number(v);
        if (!/^\d*\.?\d+$/.test(v) || n < 0 || n > 1)
          throw new Error(`"${v}" is not a number from 0 to 1`);
        return n;
      }),
    },
  };
  if (kind === 'local') {
    const stray = ['cache-redis-addrs', 'cache-redis-password', 'cache-redis-username'].find(
      (n) => one(n) !== undefined,
    );
    if (stray)
      throw new ConfigError(stray, 'is a Redis setting, but --cache-lock-backend is not redis');
    return { kind, ...timings };
  }
  const addrs = parsed('cache-redis-addrs', String)
    .split(/[\s,]+/)
    .filter(Boolean);
  for (const a of addrs) {
    if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(a)) {
      throw new ConfigError('cache-redis-addrs', `"${a}" is not host:port`);
    }
  }
  if (addrs.length === 0)
    throw new ConfigError('cache-redis-addrs', 'at least one address is required');
  return {
    kind,
    ...timings,
    addrs,
    username: one('cache-redis-username'),
    password: one('cache-redis-password'),
    db: parsed('cache-redis-db', (v) => parseIntStrict(v, 0, 1024)),
    tls: parsed('cache-redis-use-tls', parseBool),
    keyPrefix: parsed('cache-lock-redis-key-prefix', String),
    allowDegraded: parsed('cache-lock-allow-degraded-mode', parseBool),
  };
}
/** A setting's value (its default when not given), parsed by `fn`. */
export type Parsed = <T>(name: string, fn: (s: string) => T) => T;
/** A setting without a plain default, parsed by `fn` when given. */
export type Optional = <T>(name: string, fn: (s: string) => T) => T | undefined;

/** Local directory or S3, never both; local under the data path when neither is given. */
export function storageConfig(
  one: One,
  parsed: Parsed,
  optional: Optional,
  cwd: string,
  dataPath: string,
): StorageConfig {
  const local = one('cache-storage-local');
  const bucket = one('cache-storage-s3-bucket');
  if (local !== undefined && bucket !== undefined) {
    throw new ConfigError(
      'cache-storage-s3-bucket',
      'choose one storage: --cache-storage-local or --cache-storage-s3-bucket, not both',
    );
  }
  const s3Settings = [
    'cache-storage-s3-endpoint',
    'cache-storage-s3-access-key-id',
    'cache-storage-s3-secret-access-key',
    'cache-storage-s3-prefix',
  ];
  if (bucket === undefined) {
    const stray = s3Settings.find((n) => one(n) !== undefined);
    if (stray)
      throw new ConfigError(stray, 'is an S3 setting, but --cache-storage-s3-bucket is not set');
    return { kind: 'fs', path: resolve(cwd, local ?? resolve(dataPath, 'store')) };
  }
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw new ConfigError('cache-storage-s3-bucket', `"${bucket}" is not a valid bucket name`);
  }
  const accessKeyId = one('cache-storage-s3-access-key-id');
  const secretAccessKey = one('cache-storage-s3-secret-access-key');
  if ((accessKeyId === undefined) !== (secretAccessKey === undefined)) {
    throw new ConfigError(
      accessKeyId === undefined
        ? 'cache-storage-s3-access-key-id'
        : 'cache-storage-s3-secret-access-key',
      'S3 access key id and secret access key go together',
    );
  }
  const endpoint = optional('cache-storage-s3-endpoint', parseHttpUrl);
  const prefix = one('cache-storage-s3-prefix') ?? '';
  if (prefix.startsWith('/') || prefix.includes('..')) {
    throw new ConfigError('cache-storage-s3-prefix', 'must be relative and must not contain ".."');
  }
  return {
    kind: 's3',
    bucket,
    endpoint,
    region: parsed('cache-storage-s3-region', String),
    accessKeyId,
    secretAccessKey,
    forcePathStyle: parsed('cache-storage-s3-force-path-style', parseBool),
    prefix,
    spoolDir: resolve(dataPath, 'spool'),
  };
}
