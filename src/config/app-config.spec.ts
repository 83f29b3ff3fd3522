import { mkdtempSync, writeFileSync } from 'node:fs';
import { hostname as osHostname, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { formatPublicKey } from '../signing/keys';
import {
  buildConfig,
  ConfigError,
  parseBool,
  parseUpstreamUrl,
  type RawSettings,
} from './app-config';

const CWD = '/srv/narwhal-test-cwd';
const NIXOS_KEY = 'cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=';
// `nix-store --generate-binary-cache-key test-1 sk pk` (see src/nix/__fixtures__/vectors.ts)
const TEST_KEY = 'test-1:d8+pFuppcWDFjG1rF7876FZr+FwLvafi4PhlsZuFrUM=';

function build(raw: RawSettings) {
  return buildConfig(raw, CWD);
}

/** Runs `fn`, expects a ConfigError and returns it. */
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error('expected a ConfigError, nothing was thrown');
}

describe('buildConfig defaults', () => {
  const c = build({});

  it('listens on 0.0.0.0:8501', () => {
    expect(c.server).toEqual({ host: '0.0.0.0', port: 8501 });
  });

  it('keeps its data in ./var of the working directory', () => {
    expect(c.dataPath).toBe(join(CWD, 'var'));
    expect(c.database).toEqual({ kind: 'sqlite', path: join(CWD, 'var', 'narwhal.sqlite') });
    expect(c.storage).toEqual({ kind: 'fs', path: join(CWD, 'var', 'store') });
    expect(c.signing).toEqual({ secretKeyPath: join(CWD, 'var', 'secret-key'), signNarInfo: true });
  });

  it('resolves the data path against the given cwd, not the process cwd', () => {
    const other = buildConfig({}, '/elsewhere');
    expect(other.dataPath).toBe('/elsewhere/var');
    expect(other.database).toEqual({ kind: 'sqlite', path: '/elsewhere/var/narwhal.sqlite' });
  });

  it('uses cache.nixos.org and its key', () => {
    expect(c.upstreams).toEqual([
      { url: 'https://cache.nixos.org', priority: 40, query: '', authorization: undefined },
    ]);
    expect(c.upstreamPublicKeys).toHaveLength(1);
    expect(c.upstreamPublicKeys[0].name).toBe('cache.nixos.org-1');
    expect(c.upstreamPublicKeys[0].key).toHaveLength(32);
    expect(formatPublicKey(c.upstreamPublicKeys[0])).toBe(NIXOS_KEY);
  });

  it('has the documented timeouts, LRU, lock, log level, store dir, priority and hostname', () => {
    expect(c.upstreamTimeouts).toEqual({
      connectMs: 3_000,
      headersMs: 10_000,
      bodyMs: 60_000,
      narinfoMs: 15_000,
      minRate: 4096,
    });
    expect(c.minFreeSpace).toBe(1024 ** 3);
    expect(c.clientStallTimeoutMs).toBe(60_000);
    expect(c.lru).toEqual({ maxSize: undefined, schedule: '0 2 * * *' });
    expect(c.lock).toEqual({
      kind: 'local',
      downloadTtlMs: 10_000,
      lruTtlMs: 30_000,
      retry: { maxAttempts: 60, initialDelayMs: 50, maxDelayMs: 2000, jitter: 0.2 },
    });
    expect(c.logLevel).toBe('info');
    expect(c.storeDir).toBe('/nix/store');
    expect(c.priority).toBe(40);
    expect(c.hostname).toBe(osHostname() || 'narwhal');
  });

  it('treats an empty string like an absent setting', () => {
    const e = build({
      'cache-hostname': '',
      'server-addr': '',
      'cache-data-path': '',
      'log-level': '',
    });
    expect(e.server).toEqual({ host: '0.0.0.0', port: 8501 });
    expect(e.dataPath).toBe(join(CWD, 'var'));
    expect(e.logLevel).toBe('info');
  });
});

describe('buildConfig paths', () => {
  it('derives database, storage and key paths from the data path', () => {
    const c = build({ 'cache-data-path': '/data/nw' });
    expect(c.dataPath).toBe('/data/nw');
    expect(c.database).toEqual({ kind: 'sqlite', path: '/data/nw/narwhal.sqlite' });
    expect(c.storage).toEqual({ kind: 'fs', path: '/data/nw/store' });
    expect(c.signing.secretKeyPath).toBe('/data/nw/secret-key');
  });

  it('resolves relative paths against the cwd', () => {
    const c = build({
      'cache-data-path': 'data',
      'cache-database-url': 'sqlite:db/cache.sqlite',
      'cache-storage-local': 'nars',
      'cache-secret-key-path': 'keys/sk',
    });
    expect(c.dataPath).toBe(resolve(CWD, 'data'));
    expect(c.database).toEqual({ kind: 'sqlite', path: resolve(CWD, 'db/cache.sqlite') });
    expect(c.storage).toEqual({ kind: 'fs', path: resolve(CWD, 'nars') });
    expect(c.signing.secretKeyPath).toBe(resolve(CWD, 'keys/sk'));
  });

  it.each([
    ['sqlite:/var/lib/nw.sqlite', '/var/lib/nw.sqlite'],
    ['sqlite:///var/lib/nw.sqlite', '/var/lib/nw.sqlite'],
    ['sqlite://rel/nw.sqlite', resolve(CWD, 'rel/nw.sqlite')],
    ['sqlite:nw.sqlite', resolve(CWD, 'nw.sqlite')],
  ])('database URL %j is sqlite at %j', (url, path) => {
    expect(build({ 'cache-database-url': url }).database).toEqual({ kind: 'sqlite', path });
  });
});

describe('buildConfig values', () => {
  it.each([
    [':8080', { host: '0.0.0.0', port: 8080 }],
    ['127.0.0.1:9000', { host: '127.0.0.1', port: 9000 }],
    ['localhost:0', { host: 'localhost', port: 0 }],
    ['[::1]:8501', { host: '::1', port: 8501 }],
    ['[::]:65535', { host: '::', port: 65535 }],
  ])('server-addr %j', (addr, server) => {
    expect(build({ 'server-addr': addr }).server).toEqual(server);
  });

  it('parses sizes, durations, cron, booleans and numbers', () => {
    const c = build({
      'cache-max-size': '10G',
      'cache-lru-schedule': '0 */5 * * * *',
      'cache-upstream-dialer-timeout': '500ms',
      'cache-upstream-response-header-timeout': '1m',
      'cache-upstream-body-timeout': '1500',
      'cache-upstream-narinfo-timeout': '5s',
      'cache-upstream-min-rate': '1M',
      'cache-min-free-space': '500M',
      'cache-client-stall-timeout': '0',
      'cache-sign-narinfo': 'false',
      'cache-priority': '30',
      'cache-store-dir': '/gnu/store',
      'log-level': 'debug',
      'cache-hostname': 'cache.example-1_a',
    });
    expect(c.lru).toEqual({ maxSize: 10 * 1024 ** 3, schedule: '0 */5 * * * *' });
    expect(c.upstreamTimeouts).toEqual({
      connectMs: 500,
      headersMs: 60_000,
      bodyMs: 1_500,
      narinfoMs: 5_000,
      minRate: 1024 ** 2,
    });
    expect(c.minFreeSpace).toBe(500 * 1024 ** 2);
    expect(c.clientStallTimeoutMs).toBe(0);
    expect(c.signing.signNarInfo).toBe(false);
    expect(c.priority).toBe(30);
    expect(c.storeDir).toBe('/gnu/store');
    expect(c.logLevel).toBe('debug');
    expect(c.hostname).toBe('cache.example-1_a');
  });

  it.each(['error', 'warn', 'info', 'debug', 'verbose'])('accepts log level %j', (level) => {
    expect(build({ 'log-level': level }).logLevel).toBe(level);
  });

  it('reads --shutdown-timeout as a duration (default 30s) and rejects zero', () => {
    expect(build({}).shutdownTimeoutMs).toBe(30_000);
    expect(build({ 'shutdown-timeout': '1m30s' }).shutdownTimeoutMs).toBe(90_000);
    expect(build({ 'shutdown-timeout': '250ms' }).shutdownTimeoutMs).toBe(250);
    expect(configError(() => build({ 'shutdown-timeout': '0s' })).setting).toBe('shutdown-timeout');
    expect(configError(() => build({ 'shutdown-timeout': 'soon' })).setting).toBe(
      'shutdown-timeout',
    );
  });

  it('accepts several trusted keys, comma- or space-separated or as a list', () => {
    const expected = ['cache.nixos.org-1', 'test-1'];
    expect(
      build({ 'cache-upstream-public-key': `${NIXOS_KEY},${TEST_KEY}` }).upstreamPublicKeys.map(
        (k) => k.name,
      ),
    ).toEqual(expected);
    expect(
      build({ 'cache-upstream-public-key': `${NIXOS_KEY} ${TEST_KEY}` }).upstreamPublicKeys.map(
        (k) => k.name,
      ),
    ).toEqual(expected);
    expect(
      build({ 'cache-upstream-public-key': [NIXOS_KEY, TEST_KEY] }).upstreamPublicKeys.map(
        (k) => k.name,
      ),
    ).toEqual(expected);
    const k = build({ 'cache-upstream-public-key': TEST_KEY }).upstreamPublicKeys;
    expect(k.map(formatPublicKey)).toEqual([TEST_KEY]);
  });

  it('accepts several upstreams, comma-, space- or newline-separated or as a list', () => {
    const expected = ['https://a.example', 'https://b.example', 'http://c.example:8080'];
    for (const v of [
      'https://a.example,https://b.example,http://c.example:8080',
      'https://a.example, https://b.example , http://c.example:8080',
      'https://a.example https://b.example\nhttp://c.example:8080',
      ['https://a.example', 'https://b.example,http://c.example:8080'],
    ]) {
      expect(build({ 'cache-upstream-url': v }).upstreams.map((u) => u.url)).toEqual(expected);
    }
  });
});

describe('parseUpstreamUrl', () => {
  it('strips a trailing slash and reports no query or auth', () => {
    expect(parseUpstreamUrl('https://cache.example.org/', 0)).toEqual({
      url: 'https://cache.example.org',
      priority: 40,
      query: '',
      authorization: undefined,
    });
    expect(parseUpstreamUrl('http://host:8080/sub/path//', 0).url).toBe(
      'http://host:8080/sub/path',
    );
  });

  it('takes priority out of the query and keeps the rest of the query', () => {
    const u = parseUpstreamUrl('https://cache.example.org/sub/?priority=5&token=abc', 0);
    expect(u).toEqual({
      url: 'https://cache.example.org/sub',
      priority: 5,
      query: '?token=abc',
      authorization: undefined,
    });
  });

  it('turns credentials into a basic authorization header and strips them from the URL', () => {
    const u = parseUpstreamUrl('https://alice:s3cr%40t@private.example.org/?priority=20', 0);
    expect(u.authorization).toBe(`Basic ${Buffer.from('alice:s3cr@t').toString('base64')}`);
    expect(u.url).toBe('https://private.example.org');
    expect(u.priority).toBe(20);
    expect(u.query).toBe('');
    expect(u.url).not.toContain('alice');
    expect(u.url).not.toContain('s3cr');
  });

  it('handles a user without a password (token-style credentials)', () => {
    const u = parseUpstreamUrl('https://tok123@private.example.org', 0);
    expect(u.authorization).toBe(`Basic ${Buffer.from('tok123:').toString('base64')}`);
    expect(u.url).toBe('https://private.example.org');
  });

  it('drops a #fragment', () => {
    expect(parseUpstreamUrl('https://cache.example.org/#x', 0).url).toBe(
      'https://cache.example.org',
    );
  });

  it('names the upstream by position in errors, without echoing the URL', () => {
    expect(() => parseUpstreamUrl('not a url', 2)).toThrow('upstream #3 is not a URL');
    expect(() => parseUpstreamUrl('ftp://user:hunter2@h/', 0)).toThrow(
      /upstream #1: only http and https/,
    );
    try {
      parseUpstreamUrl('ftp://user:hunter2@h/', 0);
    } catch (e) {
      expect((e as Error).message).not.toContain('hunter2');
    }
  });

  it('carries credentials through buildConfig', () => {
    const c = build({
      'cache-upstream-url': 'https://bob:pw@p.example?priority=1, https://pub.example',
    });
    expect(c.upstreams[0]).toEqual({
      url: 'https://p.example',
      priority: 1,
      query: '',
      authorization: `Basic ${Buffer.from('bob:pw').toString('base64')}`,
    });
    expect(c.upstreams[1].authorization).toBeUndefined();
  });
});

describe('parseBool', () => {
  it.each([
    ['true', true],
    ['TRUE', true],
    ['1', true],
    ['yes', true],
    ['on', true],
    [' On ', true],
    ['false', false],
    ['0', false],
    ['no', false],
    ['off', false],
    ['False', false],
  ])('%j is %s', (s, b) => {
    expect(parseBool(s)).toBe(b);
  });

  it.each(['', 'maybe', '2', 'y', 'n'])('rejects %j', (s) => {
    expect(() => parseBool(s)).toThrow(/not a boolean/);
  });
});

describe('bad values stop startup with a ConfigError naming the setting', () => {
  const cases: Array<[setting: string, value: string | string[]]> = [
    ['server-addr', '8501'],
    ['server-addr', 'localhost'],
    ['server-addr', 'host:99999'],
    ['server-addr', 'host:http'],
    ['server-addr', ':'],
    ['server-addr', '::1:8501'],
    ['server-addr', [':1', ':2']],
    ['cache-hostname', 'bad host'],
    ['cache-hostname', 'a/b'],
    ['cache-hostname', 'a:b'],
    ['cache-database-url', 'mongodb://user:pw@db.example/narwhal'],
    ['cache-database-url', 'redis://db.example/0'],
    ['cache-database-url', '/just/a/path.sqlite'],
    ['cache-upstream-url', 'not a url'],
    ['cache-upstream-url', 'ftp://cache.example.org'],
    ['cache-upstream-url', 'https://a.example?priority=high'],
    ['cache-upstream-url', 'https://a.example?priority=-1'],
    ['cache-upstream-url', 'https://a.example, nope'],
    ['cache-upstream-url', ''],
    ['cache-upstream-url', []],
    ['cache-upstream-public-key', 'nokey'],
    ['cache-upstream-public-key', 'name:AAAA'],
    ['cache-upstream-public-key', ':6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY='],
    ['cache-upstream-public-key', `${NIXOS_KEY},broken:key`],
    ['cache-upstream-public-key', ','],
    ['cache-max-size', '10X'],
    ['cache-max-size', 'lots'],
    ['cache-max-size', '0'],
    ['cache-lru-schedule', 'every night'],
    ['cache-lru-schedule', '0 2 * *'],
    ['cache-lru-schedule', '61 * * * *'],
    ['cache-upstream-dialer-timeout', 'soon'],
    ['cache-upstream-dialer-timeout', '0s'],
    ['cache-upstream-response-header-timeout', '10 s'],
    ['cache-upstream-body-timeout', '1d'],
    ['cache-upstream-body-timeout', '0'],
    ['cache-sign-narinfo', 'maybe'],
    ['cache-lock-backend', 'etcd'],
    ['cache-redis-addrs', 'localhost'],
    ['cache-lock-retry-jitter', '2'],
    ['cache-priority', 'high'],
    ['cache-priority', '-1'],
    ['cache-priority', '1.5'],
    ['cache-store-dir', 'nix/store'],
    ['cache-store-dir', '/nix/store/'],
    ['cache-store-dir', '/'],
    ['log-level', 'loud'],
    ['log-level', 'INFO'],
  ];

  it.each(cases)('--%s %j', (setting, value) => {
    const e = configError(() => build({ [setting]: value }));
    expect(e.setting).toBe(setting);
    expect(e.name).toBe('ConfigError');
    expect(e.message.startsWith(`--${setting}: `)).toBe(true);
    // The reason follows the prefix.
    expect(e.message.length).toBeGreaterThan(`--${setting}: `.length);
  });

  it('says why: unsupported database scheme, without the password', () => {
    const e = configError(() =>
      build({ 'cache-database-url': 'mongodb://user:hunter2@db.example/narwhal' }),
    );
    expect(e.message).toContain('mongodb');
    expect(e.message).not.toContain('hunter2');
  });

  it('says why: an unknown lock backend', () => {
    expect(configError(() => build({ 'cache-lock-backend': 'etcd' })).message).toContain('"etcd"');
  });

  it('rejects Redis settings without the redis lock backend', () => {
    expect(configError(() => build({ 'cache-redis-addrs': 'r:6379' })).setting).toBe(
      'cache-redis-addrs',
    );
  });

  it('builds the redis lock backend with its defaults', () => {
    const c = build({ 'cache-lock-backend': 'redis', 'cache-redis-password': 'hunter2' });
    expect(c.lock).toMatchObject({
      kind: 'redis',
      addrs: ['127.0.0.1:6379'],
      db: 0,
      tls: false,
      keyPrefix: 'narwhal:lock:',
      allowDegraded: true,
      password: 'hunter2',
      downloadTtlMs: 10_000,
      lruTtlMs: 30_000,
    });
  });

  it('says why: a single-valued setting given twice', () => {
    expect(configError(() => build({ 'cache-hostname': ['a', 'b'] })).message).toBe(
      '--cache-hostname: given more than once',
    );
  });

  it('says why: a bad size quotes the value', () => {
    expect(configError(() => build({ 'cache-max-size': '10X' })).message).toContain(
      '"10X" is not a size',
    );
  });

  it('does not echo upstream credentials in errors', () => {
    const e = configError(() =>
      build({ 'cache-upstream-url': 'https://bob:hunter2@p.example?priority=x' }),
    );
    expect(e.setting).toBe('cache-upstream-url');
    expect(e.message).not.toContain('hunter2');
  });

  it('checks a single-valued setting given as a one-element list like a plain value', () => {
    expect(build({ 'server-addr': [':9999'] }).server.port).toBe(9999);
  });
});

describe('fast misses and upstream health settings', () => {
  it('defaults: hedged lookups, a 1 minute negative cache, breaker after 5 failures for 10 s..5 m', () => {
    const c = build({});
    expect(c.upstreamHedge).toBe(true);
    expect(c.negativeTtlMs).toBe(60_000);
    expect(c.upstreamBreaker).toEqual({ failures: 5, backoffMs: 10_000, maxBackoffMs: 300_000 });
  });

  it('accepts 0 for the negative TTL and the breaker, and refuses a maximum below the first back-off', () => {
    const c = build({ 'cache-negative-ttl': '0', 'cache-upstream-breaker-failures': '0' });
    expect(c.negativeTtlMs).toBe(0);
    expect(c.upstreamBreaker.failures).toBe(0);
    expect(
      configError(() =>
        build({
          'cache-upstream-breaker-backoff': '1m',
          'cache-upstream-breaker-max-backoff': '10s',
        }),
      ).setting,
    ).toBe('cache-upstream-breaker-max-backoff');
    expect(configError(() => build({ 'cache-negative-ttl': 'soon' })).setting).toBe(
      'cache-negative-ttl',
    );
  });
});

describe('--netrc-file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'narwhal-netrc-'));
  const file = join(dir, 'netrc');
  writeFileSync(
    file,
    'machine private.example login alice password s3cret\nmachine url.example login x password y\n',
  );

  it('gives an upstream on a netrc host basic auth; other hosts get none; URL credentials win', () => {
    const c = build({
      'netrc-file': file,
      'cache-upstream-url': [
        'https://private.example/cache',
        'https://other.example',
        'https://bob:pw@url.example',
      ],
    });
    expect(c.upstreams.map((u) => u.authorization)).toEqual([
      `Basic ${Buffer.from('alice:s3cret').toString('base64')}`,
      undefined,
      `Basic ${Buffer.from('bob:pw').toString('base64')}`,
    ]);
  });

  it('a missing or malformed file stops startup naming the setting', () => {
    expect(configError(() => build({ 'netrc-file': join(dir, 'absent') })).setting).toBe(
      'netrc-file',
    );
    const bad = join(dir, 'bad');
    writeFileSync(bad, 'machine a login');
    expect(configError(() => build({ 'netrc-file': bad })).message).toMatch(/netrc-file.*no value/);
  });
});
