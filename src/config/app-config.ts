import { hostname as osHostname } from 'node:os';
import { resolve } from 'node:path';
import { validateCronExpression } from 'cron';
import { parsePublicKey, type PublicKey } from '../signing/keys';
import { parseDuration, parseSize } from './units';

/** A bad setting: startup stops with this message, which names the setting. */
export class ConfigError extends Error {
  constructor(
    readonly setting: string,
    message: string,
  ) {
    super(`--${setting}: ${message}`);
    this.name = 'ConfigError';
  }
}

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
  upstreams.sort((a, b) => a.priority - b.priority); // stable: ties keep the given order

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

function parseIntStrict(s: string, min: number, max: number): number {
  if (!/^-?\d+$/.test(s)) throw new Error(`"${s}" is not a whole number`);
  const n = Number(s);
  if (n < min || n > max) throw new Error(`${n} is outside ${min}..${max}`);
  return n;
}

/** An http(s) URL, without trailing slashes. */
function parseHttpUrl(v: string): string {
  const u = new URL(v);
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('must be an http(s) URL');
  return v.replace(/\/+$/, '');
}

export function parseBool(s: string): boolean {
  const v = s.trim().toLowerCase();
  if (['true', '1', 'yes', 'on'].includes(v)) return true;
  if (['false', '0', 'no', 'off'].includes(v)) return false;
  throw new Error(`"${s}" is not a boolean (true/false)`);
}

function parseServerAddr(s: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]*)):(\d{1,5})$/.exec(s.trim());
  if (!m) throw new Error(`"${s}" is not an address of the form [host]:port`);
  const port = parseIntStrict(m[3], 0, 65535);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

function parseDatabaseUrl(cwd: string, poolMax: number) {
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

type One = (name: string) => string | undefined;

function lockConfig(one: One, parsed: Parsed, duration: (s: string) => number): LockConfig {
  const kind = parsed(
    'cache-lock-backend',
    (v) => {
      if (v !== 'local' && v !== 'redis')
        throw new Error(`"${v}" is not a lock backend (local, redis)`);
      return v;
    },
    'local',
  );
  const timings: LockTimings = {
    downloadTtlMs: parsed('cache-lock-download-ttl', duration, 5 * 60_000),
    lruTtlMs: parsed('cache-lock-lru-ttl', duration, 30 * 60_000),
    retry: {
      maxAttempts: parsed(
        'cache-lock-retry-max-attempts',
        (v) => parseIntStrict(v, 1, 1_000_000),
        600,
      ),
      initialDelayMs: parsed('cache-lock-retry-initial-delay', duration, 50),
      maxDelayMs: parsed('cache-lock-retry-max-delay', duration, 2000),
      jitter: parsed(
        'cache-lock-retry-jitter',
        (v) => {
          const n = Number(v);
          if (!/^\d*\.?\d+$/.test(v) || n < 0 || n > 1)
            throw new Error(`"${v}" is not a number from 0 to 1`);
          return n;
        },
        0.2,
      ),
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
  const addrs = (one('cache-redis-addrs') ?? '127.0.0.1:6379').split(/[\s,]+/).filter(Boolean);
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
    db: parsed('cache-redis-db', (v) => parseIntStrict(v, 0, 1024), 0),
    tls: parsed('cache-redis-use-tls', parseBool, false),
    keyPrefix: one('cache-lock-redis-key-prefix') ?? 'narwhal:lock:',
    allowDegraded: parsed('cache-lock-allow-degraded-mode', parseBool, true),
  };
}
type Parsed = <T>(name: string, fn: (s: string) => T, fallback: T) => T;

/** Local directory or S3, never both; local under the data path when neither is given. */
function storageConfig(one: One, parsed: Parsed, cwd: string, dataPath: string): StorageConfig {
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
  const endpoint = parsed(
    'cache-storage-s3-endpoint',
    parseHttpUrl,
    undefined as string | undefined,
  );
  const prefix = one('cache-storage-s3-prefix') ?? '';
  if (prefix.startsWith('/') || prefix.includes('..')) {
    throw new ConfigError('cache-storage-s3-prefix', 'must be relative and must not contain ".."');
  }
  return {
    kind: 's3',
    bucket,
    endpoint,
    region: one('cache-storage-s3-region') ?? 'us-east-1',
    accessKeyId,
    secretAccessKey,
    forcePathStyle: parsed('cache-storage-s3-force-path-style', parseBool, false),
    prefix,
    spoolDir: resolve(dataPath, 'spool'),
  };
}

/** `https://user:pass@host/path?priority=10` → base URL, priority, basic-auth header. */
export function parseUpstreamUrl(text: string, index: number): UpstreamConfig {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new Error(`upstream #${index + 1} is not a URL`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new Error(`upstream #${index + 1}: only http and https are supported`);
  }
  let priority = 40;
  const p = u.searchParams.get('priority');
  if (p !== null) priority = parseIntStrict(p, 0, 1_000_000);
  u.searchParams.delete('priority');
  let authorization: string | undefined;
  if (u.username || u.password) {
    const user = decodeURIComponent(u.username);
    const pass = decodeURIComponent(u.password);
    authorization = `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
    u.username = '';
    u.password = '';
  }
  const query = u.search;
  u.search = '';
  u.hash = '';
  const url = u.toString().replace(/\/+$/, '');
  return { url, priority, query, authorization };
}
