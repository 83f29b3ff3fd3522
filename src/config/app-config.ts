import { hostname as osHostname } from 'node:os';
import { resolve } from 'node:path';
import { validateCronExpression } from 'cron';
import { parsePublicKey, type PublicKey } from '../signing/keys';
import { lockConfig, parseDatabaseUrl, storageConfig } from './backend-config';
import { ConfigError } from './config-error';
import {
  parseBool,
  parseHttpUrl,
  parseIntStrict,
  parseServerAddr,
  parseUpstreamUrl,
} from './parsers';
import { parseDuration, parseSize } from './units';

export { ConfigError } from './config-error';
export { parseBool, parseUpstreamUrl } from './parsers';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug' | 'verbose';
export type DatabaseConfig =
  | { kind: 'sqlite'; path: string }
  | { kind: 'postgres'; url: string; poolMax: number }
  | { kind: 'mysql'; url: string; poolMax: number };
export type S3StorageConfig = {
  kind: 's3';
  bucket: string;
  endpoint?: string;
  region: string;
  accessKeyId?: string;
  secretAccessKey?: string;
  forcePathStyle: boolean;
  prefix: string;
  /** Local directory for download spools. */
  spoolDir: string;
};
export type StorageConfig = { kind: 'fs'; path: string } | S3StorageConfig;
export interface LockTimings {
  downloadTtlMs: number;
  lruTtlMs: number;
  retry: { maxAttempts: number; initialDelayMs: number; maxDelayMs: number; jitter: number };
}
export type LockConfig =
  | ({ kind: 'local' } & LockTimings)
  | ({
      kind: 'redis';
      addrs: string[];
      username?: string;
      password?: string;
      db: number;
      tls: boolean;
      keyPrefix: string;
      allowDegraded: boolean;
    } & LockTimings);

/** One `--cache-upstream-url`, as given (UpstreamService orders them by priority). */
export interface UpstreamConfig {
  /** Base URL without credentials, query or trailing slash. */
  url: string;
  priority: number;
  /** Query string (with `?`) added to every request, or ''. */
  query: string;
  /** `Authorization` header value built from URL credentials; never logged. */
  authorization?: string;
}

export interface AppConfig {
  server: { host: string; port: number };
  hostname: string;
  dataPath: string;
  storeDir: string;
  priority: number;
  database: DatabaseConfig;
  storage: StorageConfig;
  upstreams: UpstreamConfig[];
  upstreamPublicKeys: PublicKey[];
  upstreamTimeouts: { connectMs: number; headersMs: number; bodyMs: number };
  signing: { secretKeyPath: string; signNarInfo: boolean };
  lru: { maxSize?: number; schedule: string };
  lock: LockConfig;
  /** How other instances reach this one (for streaming an in-flight download); derived when unset. */
  advertiseUrl?: string;
  /** `GET /metrics` (Prometheus) when enabled. */
  metrics: { enabled: boolean };
  logLevel: LogLevel;
  /** How long in-flight responses may run after SIGTERM/SIGINT before they are cut. */
  shutdownTimeoutMs: number;
}

/** Raw values by setting name, already merged by precedence (flag > env > file). */
export type RawSettings = Record<string, string | string[] | undefined>;

export const APP_CONFIG = Symbol('APP_CONFIG');

const DEFAULT_UPSTREAM = 'https://cache.nixos.org';
const DEFAULT_UPSTREAM_KEY = 'cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=';
const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug', 'verbose'];

/** Validates raw settings into the typed config. Throws ConfigError naming the first bad one. */
export function buildConfig(raw: RawSettings, cwd = process.cwd()): AppConfig {
  const one = (name: string): string | undefined => {
    const v = raw[name];
    if (Array.isArray(v)) {
      if (v.length > 1) throw new ConfigError(name, 'given more than once');
      return v[0];
    }
    return v === '' ? undefined : v;
  };
  const many = (name: string, fallback: string[]): string[] => {
    const v = raw[name];
    if (v === undefined) return fallback;
    const list = (Array.isArray(v) ? v : [v]).flatMap((s) => s.split(/[\s,]+/)).filter(Boolean);
    return list;
  };
  const parsed = <T>(name: string, fn: (s: string) => T, fallback: T): T => {
    const v = one(name);
    if (v === undefined) return fallback;
    try {
      return fn(v);
    } catch (e) {
      throw new ConfigError(name, (e as Error).message);
    }
  };

  const dataPath = resolve(cwd, one('cache-data-path') ?? './var');
  const logLevel = parsed(
    'log-level',
    (s) => {
      if (!LOG_LEVELS.includes(s as LogLevel))
        throw new Error(`must be one of ${LOG_LEVELS.join(', ')}`);
      return s as LogLevel;
    },
    'info',
  );

  const hostname = parsed(
    'cache-hostname',
    (s) => {
      if (!/^[A-Za-z0-9._-]+$/.test(s))
        throw new Error(`"${s}" may only contain letters, digits, ".", "_" and "-"`);
      return s;
    },
    osHostname() || 'narwhal',
  );

  const upstreams = many('cache-upstream-url', [DEFAULT_UPSTREAM]).map((u, i) => {
    try {
      return parseUpstreamUrl(u, i);
    } catch (e) {
      throw new ConfigError('cache-upstream-url', (e as Error).message);
    }
  });
  if (upstreams.length === 0)
    throw new ConfigError('cache-upstream-url', 'at least one upstream is required');

  const upstreamPublicKeys = many('cache-upstream-public-key', [DEFAULT_UPSTREAM_KEY]).map((k) => {
    try {
      return parsePublicKey(k);
    } catch (e) {
      throw new ConfigError('cache-upstream-public-key', (e as Error).message);
    }
  });
  if (upstreamPublicKeys.length === 0) {
    throw new ConfigError(
      'cache-upstream-public-key',
      'at least one trusted upstream key is required',
    );
  }

  const poolMax = parsed('cache-database-pool-max', (s) => parseIntStrict(s, 1, 1000), 20);

  const positiveDuration = (s: string): number => {
    const ms = parseDuration(s);
    if (ms <= 0) throw new Error('must be greater than zero');
    return ms;
  };

  return {
    server: parsed('server-addr', parseServerAddr, { host: '0.0.0.0', port: 8501 }),
    hostname,
    dataPath,
    storeDir: parsed(
      'cache-store-dir',
      (s) => {
        if (!/^\/[^\s]*[^/]$/.test(s))
          throw new Error('must be an absolute path without a trailing slash');
        return s;
      },
      '/nix/store',
    ),
    priority: parsed('cache-priority', (s) => parseIntStrict(s, 0, 1_000_000), 40),
    database: parsed('cache-database-url', parseDatabaseUrl(cwd, poolMax), {
      kind: 'sqlite',
      path: resolve(dataPath, 'narwhal.sqlite'),
    }),
    storage: storageConfig(one, parsed, cwd, dataPath),
    upstreams,
    upstreamPublicKeys,
    upstreamTimeouts: {
      connectMs: parsed('cache-upstream-dialer-timeout', positiveDuration, 3000),
      headersMs: parsed('cache-upstream-response-header-timeout', positiveDuration, 10_000),
      bodyMs: parsed('cache-upstream-body-timeout', positiveDuration, 60_000),
    },
    signing: {
      secretKeyPath: resolve(cwd, one('cache-secret-key-path') ?? resolve(dataPath, 'secret-key')),
      signNarInfo: parsed('cache-sign-narinfo', parseBool, true),
    },
    lru: {
      maxSize: parsed(
        'cache-max-size',
        (s) => {
          const n = parseSize(s);
          if (n <= 0) throw new Error('must be greater than zero');
          return n;
        },
        undefined as number | undefined,
      ),
      schedule: parsed(
        'cache-lru-schedule',
        (s) => {
          const check = validateCronExpression(s);
          if (!check.valid) throw new Error(`"${s}" is not a cron expression`);
          return s;
        },
        '0 2 * * *',
      ),
    },
    lock: lockConfig(one, parsed, positiveDuration),
    advertiseUrl: parsed('cache-advertise-url', parseHttpUrl, undefined as string | undefined),
    metrics: { enabled: parsed('prometheus-enabled', parseBool, false) },
    logLevel,
    shutdownTimeoutMs: parsed('shutdown-timeout', positiveDuration, 30_000),
  };
}
