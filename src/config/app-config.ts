import { readFileSync } from 'node:fs';
import { hostname as osHostname } from 'node:os';
import { resolve } from 'node:path';
import { validateCronExpression } from 'cron';
import { parsePublicKey } from '../nix/key-text';
import { lockConfig, parseDatabaseUrl, storageConfig } from './backend-config';
import type { AppConfig, LogLevel } from './config-types';
import { ConfigError } from './config-error';
import { basicAuthorization, parseNetrc } from './netrc';
import {
  parseBool,
  parseHttpUrl,
  parseIntStrict,
  parseServerAddr,
  parseUpstreamUrl,
} from './parsers';
import { settingDef } from './settings';
import { parseDuration, parseSize } from './units';

export type * from './config-types';
export { ConfigError } from './config-error';
export { parseBool, parseUpstreamUrl } from './parsers';

/** Raw values by setting name, already merged by precedence (flag > env > file). */
export type RawSettings = Record<string, string | string[] | undefined>;

export const APP_CONFIG = Symbol('APP_CONFIG');

const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug', 'verbose'];

/**
 * Validates raw settings into the typed config. Throws ConfigError naming the first bad one. A
 * setting not given takes its default from SETTINGS, parsed like a given value.
 */
export function buildConfig(raw: RawSettings, cwd = process.cwd()): AppConfig {
  const one = (name: string): string | undefined => {
    const v = raw[name];
    if (Array.isArray(v)) {
      if (v.length > 1) throw new ConfigError(name, 'given more than once');
      return v[0];
    }
    return v === '' ? undefined : v;
  };
  const many = (name: string): string[] => {
    const v = raw[name] ?? settingDef(name).default;
    if (v === undefined) return [];
    return (Array.isArray(v) ? v : [v]).flatMap((s) => s.split(/[\s,]+/)).filter(Boolean);
  };
  const parseAs = <T>(name: string, fn: (s: string) => T, v: string): T => {
    try {
      return fn(v);
    } catch (e) {
      throw new ConfigError(name, (e as Error).message);
    }
  };
  const optional = <T>(name: string, fn: (s: string) => T): T | undefined => {
    const v = one(name);
    return v === undefined ? undefined : parseAs(name, fn, v);
  };
  const parsed = <T>(name: string, fn: (s: string) => T): T => {
    const v = one(name) ?? settingDef(name).default;
    if (v === undefined) throw new Error(`setting ${name} has no default`);
    return parseAs(name, fn, v);
  };

  const dataPath = resolve(cwd, parsed('cache-data-path', String));
  const logLevel = parsed('log-level', (s) => {
    if (!LOG_LEVELS.includes(s as LogLevel))
      throw new Error(`must be one of ${LOG_LEVELS.join(', ')}`);
    return s as LogLevel;
  });

  const hostname =
    optional('cache-hostname', (s) => {
      if (!/^[A-Za-z0-9._-]+$/.test(s))
        throw new Error(`"${s}" may only contain letters, digits, ".", "_" and "-"`);
      return s;
    }) ??
    (osHostname() || 'narwhal');

  const upstreams = many('cache-upstream-url').map((u, i) => {
    try {
      return parseUpstreamUrl(u, i);
    } catch (e) {
      throw new ConfigError('cache-upstream-url', (e as Error).message);
    }
  });
  if (upstreams.length === 0)
    throw new ConfigError('cache-upstream-url', 'at least one upstream is required');
  const netrc = optional('netrc-file', (path) => {
    let text: string;
    try {
      text = readFileSync(resolve(cwd, path), 'utf8');
    } catch (e) {
      throw new Error(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    }
    return parseNetrc(text);
  });
  if (netrc) {
    for (const u of upstreams) {
      const entry = netrc.get(new URL(u.url).hostname.toLowerCase());
      if (u.authorization === undefined && entry) u.authorization = basicAuthorization(entry);
    }
  }

  const publicKeys = (name: string) =>
    many(name).map((k) => {
      try {
        return parsePublicKey(k);
      } catch (e) {
        throw new ConfigError(name, (e as Error).message);
      }
    });
  const upstreamPublicKeys = publicKeys('cache-upstream-public-key');
  if (upstreamPublicKeys.length === 0) {
    throw new ConfigError(
      'cache-upstream-public-key',
      'at least one trusted upstream key is required',
    );
  }

  const poolMax = parsed('cache-database-pool-max', (s) => parseIntStrict(s, 1, 1000));

  const positiveDuration = (s: string): number => {
    const ms = parseDuration(s);
    if (ms <= 0) throw new Error('must be greater than zero');
    return ms;
  };

  const server = parsed('server-addr', parseServerAddr);
  const advertiseUrl = optional('cache-advertise-url', parseHttpUrl);
  return {
    server,
    hostname,
    dataPath,
    storeDir: parsed('cache-store-dir', (s) => {
      if (!/^\/[^\s]*[^/]$/.test(s))
        throw new Error('must be an absolute path without a trailing slash');
      return s;
    }),
    priority: parsed('cache-priority', (s) => parseIntStrict(s, 0, 1_000_000)),
    database: optional('cache-database-url', parseDatabaseUrl(cwd, poolMax)) ?? {
      kind: 'sqlite',
      path: resolve(dataPath, 'narwhal.sqlite'),
    },
    storage: storageConfig(one, parsed, optional, cwd, dataPath),
    minFreeSpace: parsed('cache-min-free-space', parseSize),
    upstreams,
    upstreamPublicKeys,
    upstreamHedge: parsed('cache-upstream-hedge', parseBool),
    upstreamBreaker: upstreamBreaker(parsed, positiveDuration),
    negativeTtlMs: parsed('cache-negative-ttl', parseDuration),
    prefetch: {
      narinfos: parsed('cache-prefetch-narinfos', parseBool),
      nars: parsed('cache-prefetch-nars', parseBool),
      concurrency: parsed('cache-prefetch-concurrency', (s) => parseIntStrict(s, 1, 1000)),
      perUpstream: parsed('cache-prefetch-per-upstream', (s) => parseIntStrict(s, 1, 10_000)),
    },
    upstreamTimeouts: {
      connectMs: parsed('cache-upstream-dialer-timeout', positiveDuration),
      headersMs: parsed('cache-upstream-response-header-timeout', positiveDuration),
      bodyMs: parsed('cache-upstream-body-timeout', positiveDuration),
      narinfoMs: parsed('cache-upstream-narinfo-timeout', positiveDuration),
      minRate: parsed('cache-upstream-min-rate', parseSize),
    },
    signing: {
      secretKeyPath: resolve(cwd, one('cache-secret-key-path') ?? resolve(dataPath, 'secret-key')),
      signNarInfo: parsed('cache-sign-narinfo', parseBool),
    },
    lru: {
      maxSize: optional('cache-max-size', (s) => {
        const n = parseSize(s);
        if (n <= 0) throw new Error('must be greater than zero');
        return n;
      }),
      schedule: parsed('cache-lru-schedule', (s) => {
        const check = validateCronExpression(s);
        if (!check.valid) throw new Error(`"${s}" is not a cron expression`);
        return s;
      }),
    },
    lock: lockConfig(one, parsed, positiveDuration),
    advertiseUrl,
    selfUrl: advertiseUrl ?? derivedSelfUrl(server),
    metrics: { enabled: parsed('prometheus-enabled', parseBool) },
    access: {
      allowPut: parsed('cache-allow-put-verb', parseBool),
      allowDelete: parsed('cache-allow-delete-verb', parseBool),
      requireReadToken: parsed('cache-require-read-token', parseBool),
      requireTrustedSignature: parsed('cache-require-trusted-signature', parseBool),
      uploadPublicKeys: publicKeys('cache-upload-public-key'),
      tokenRecheckMs: parsed('cache-token-recheck-interval', parseDuration),
      metricsRequireToken: parsed('prometheus-require-token', parseBool),
    },
    logLevel,
    clientStallTimeoutMs: parsed('cache-client-stall-timeout', parseDuration),
    sendfile: parsed('cache-sendfile', parseBool),
    fastLane: parsed('server-fast-lane', parseBool),
    shutdownTimeoutMs: parsed('shutdown-timeout', positiveDuration),
  };
}

/** The circuit breaker of every upstream: when it opens and for how long. */
function upstreamBreaker(
  parsed: <T>(name: string, fn: (s: string) => T) => T,
  positiveDuration: (s: string) => number,
): AppConfig['upstreamBreaker'] {
  const backoffMs = parsed('cache-upstream-breaker-backoff', positiveDuration);
  const maxBackoffMs = parsed('cache-upstream-breaker-max-backoff', positiveDuration);
  if (maxBackoffMs < backoffMs) {
    throw new ConfigError(
      'cache-upstream-breaker-max-backoff',
      'must not be shorter than --cache-upstream-breaker-backoff',
    );
  }
  return {
    failures: parsed('cache-upstream-breaker-failures', (s) => parseIntStrict(s, 0, 1_000_000)),
    backoffMs,
    maxBackoffMs,
  };
}

/** `http://<host>:<port>` of the listen address, the machine's name for a wildcard address. */
function derivedSelfUrl({ host, port }: { host: string; port: number }): string {
  const wildcard = host === '0.0.0.0' || host === '::' || host === '';
  return `http://${wildcard ? osHostname() : host.includes(':') ? `[${host}]` : host}:${port}`;
}
