import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { hostname as osHostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, type RawSettings } from './app-config';
import { describeConfig, loadConfig, readYamlSettings } from './load-config';
import { envName, SETTINGS } from './settings';

const NIXOS_KEY = 'cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=';
// `nix-store --generate-binary-cache-key test-1 sk pk` (see src/nix/__fixtures__/vectors.ts)
const TEST_KEY = 'test-1:d8+pFuppcWDFjG1rF7876FZr+FwLvafi4PhlsZuFrUM=';

let dir: string;
let cwd: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'narwhal-config-'));
  cwd = join(dir, 'cwd');
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function yamlFile(text: string, name = 'narwhal.yaml'): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

function load(opts: { flags?: RawSettings; env?: NodeJS.ProcessEnv; file?: string }) {
  return loadConfig({ flags: opts.flags ?? {}, env: opts.env ?? {}, file: opts.file, cwd });
}

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error('expected a ConfigError, nothing was thrown');
}

describe('envName', () => {
  it('upper-cases and turns dashes into underscores', () => {
    expect(envName('cache-upstream-url')).toBe('CACHE_UPSTREAM_URL');
    expect(envName('server-addr')).toBe('SERVER_ADDR');
    expect(envName('log-level')).toBe('LOG_LEVEL');
  });

  it('gives every setting a distinct variable', () => {
    const names = SETTINGS.map((s) => envName(s.name));
    expect(new Set(names).size).toBe(SETTINGS.length);
  });
});

describe('loadConfig defaults', () => {
  it('with no flags, env or file', () => {
    const c = load({});
    expect(c.server).toEqual({ host: '0.0.0.0', port: 8501 });
    expect(c.dataPath).toBe(join(cwd, 'var'));
    expect(c.database).toEqual({ kind: 'sqlite', path: join(cwd, 'var', 'narwhal.sqlite') });
    expect(c.storage).toEqual({ kind: 'fs', path: join(cwd, 'var', 'store') });
    expect(c.upstreams.map((u) => u.url)).toEqual(['https://cache.nixos.org']);
    expect(c.upstreamPublicKeys.map((k) => k.name)).toEqual(['cache.nixos.org-1']);
    expect(c.hostname).toBe(osHostname() || 'narwhal');
  });

  it('ignores environment variables that are not settings', () => {
    const c = load({ env: { PORT: '1', HOSTNAME: 'other', NARWHAL_SERVER_ADDR: ':1' } });
    expect(c.server.port).toBe(8501);
    expect(c.hostname).toBe(osHostname() || 'narwhal');
  });

  it('an empty file is like no file', () => {
    const c = load({ file: yamlFile('') });
    expect(c.server).toEqual({ host: '0.0.0.0', port: 8501 });
    expect(readYamlSettings(yamlFile('# only a comment\n', 'c.yaml'))).toEqual({});
  });
});

describe('precedence: flag > env > file > default', () => {
  const fileText = [
    'cache-hostname: from-file',
    'server-addr: 127.0.0.1:7001',
    'log-level: warn',
    'cache-priority: 41',
  ].join('\n');

  it('the flag wins over env and file', () => {
    const c = load({
      flags: { 'cache-hostname': 'from-flag', 'server-addr': ':7003' },
      env: { CACHE_HOSTNAME: 'from-env', SERVER_ADDR: ':7002' },
      file: yamlFile(fileText),
    });
    expect(c.hostname).toBe('from-flag');
    expect(c.server).toEqual({ host: '0.0.0.0', port: 7003 });
    // Settings not given as flags still come from the file.
    expect(c.logLevel).toBe('warn');
    expect(c.priority).toBe(41);
  });

  it('env wins over the file', () => {
    const c = load({
      env: { CACHE_HOSTNAME: 'from-env', SERVER_ADDR: ':7002', LOG_LEVEL: 'error' },
      file: yamlFile(fileText),
    });
    expect(c.hostname).toBe('from-env');
    expect(c.server.port).toBe(7002);
    expect(c.logLevel).toBe('error');
    expect(c.priority).toBe(41);
  });

  it('the file wins over the default', () => {
    const c = load({ file: yamlFile(fileText) });
    expect(c.hostname).toBe('from-file');
    expect(c.server).toEqual({ host: '127.0.0.1', port: 7001 });
    expect(c.logLevel).toBe('warn');
    expect(c.priority).toBe(41);
    expect(c.lru.schedule).toBe('0 2 * * *');
  });

  it('an empty env value does not hide the file', () => {
    const c = load({ env: { CACHE_HOSTNAME: '', SERVER_ADDR: '' }, file: yamlFile(fileText) });
    expect(c.hostname).toBe('from-file');
    expect(c.server.port).toBe(7001);
  });

  it('a repeatable setting from a higher source replaces, not extends, a lower one', () => {
    const file = yamlFile('cache-upstream-url: [https://file-a.example, https://file-b.example]\n');
    expect(load({ file }).upstreams.map((u) => u.url)).toEqual([
      'https://file-a.example',
      'https://file-b.example',
    ]);
    expect(
      load({ env: { CACHE_UPSTREAM_URL: 'https://env.example' }, file }).upstreams.map(
        (u) => u.url,
      ),
    ).toEqual(['https://env.example']);
    expect(
      load({
        flags: { 'cache-upstream-url': ['https://flag-1.example', 'https://flag-2.example'] },
        env: { CACHE_UPSTREAM_URL: 'https://env.example' },
        file,
      }).upstreams.map((u) => u.url),
    ).toEqual(['https://flag-1.example', 'https://flag-2.example']);
  });

  it('a bad value in a lower source is not looked at when a higher source sets the setting', () => {
    const c = load({
      flags: { 'cache-max-size': '1G' },
      env: { CACHE_MAX_SIZE: 'huge' },
      file: yamlFile('cache-max-size: nope\n'),
    });
    expect(c.lru.maxSize).toBe(1024 ** 3);
  });

  it('relative paths from any source resolve against the given cwd', () => {
    const c = load({ env: { CACHE_DATA_PATH: 'state' } });
    expect(c.dataPath).toBe(join(cwd, 'state'));
    expect(c.database).toEqual({ kind: 'sqlite', path: join(cwd, 'state', 'narwhal.sqlite') });
    const f = load({ file: yamlFile('cache-storage-local: nars\n') });
    expect(f.storage).toEqual({ kind: 'fs', path: join(cwd, 'nars') });
  });
});

describe('repeatable values in the environment', () => {
  it('splits upstream URLs on commas and whitespace', () => {
    const c = load({
      env: {
        CACHE_UPSTREAM_URL:
          'https://a.example?priority=30, https://b.example\thttps://c.example?priority=10',
      },
    });
    // In the given order: UpstreamService sorts them by priority.
    expect(c.upstreams.map((u) => [u.url, u.priority])).toEqual([
      ['https://a.example', 30],
      ['https://b.example', 40],
      ['https://c.example', 10],
    ]);
  });

  it('splits public keys on commas', () => {
    const c = load({ env: { CACHE_UPSTREAM_PUBLIC_KEY: `${NIXOS_KEY},${TEST_KEY}` } });
    expect(c.upstreamPublicKeys.map((k) => k.name)).toEqual(['cache.nixos.org-1', 'test-1']);
  });

  it('reports a bad element of the list', () => {
    const e = configError(() =>
      load({ env: { CACHE_UPSTREAM_PUBLIC_KEY: `${NIXOS_KEY},garbage` } }),
    );
    expect(e.message.startsWith('--cache-upstream-public-key: ')).toBe(true);
  });
});

describe('YAML file', () => {
  it('accepts nested keys', () => {
    const file = yamlFile(`
server:
  addr: "127.0.0.1:9000"
log:
  level: debug
cache:
  hostname: nested-host
  data-path: /srv/nw
  max-size: 10G
  lru-schedule: "0 3 * * *"
  sign-narinfo: false
  priority: 20
  upstream:
    url:
      - https://a.example?priority=20
      - https://b.example
    public-key:
      - ${TEST_KEY}
    dialer-timeout: 5s
`);
    const c = load({ file });
    expect(c.server).toEqual({ host: '127.0.0.1', port: 9000 });
    expect(c.logLevel).toBe('debug');
    expect(c.hostname).toBe('nested-host');
    expect(c.dataPath).toBe('/srv/nw');
    expect(c.database).toEqual({ kind: 'sqlite', path: '/srv/nw/narwhal.sqlite' });
    expect(c.lru).toEqual({ maxSize: 10 * 1024 ** 3, schedule: '0 3 * * *' });
    expect(c.signing.signNarInfo).toBe(false);
    expect(c.priority).toBe(20);
    expect(c.upstreams.map((u) => [u.url, u.priority])).toEqual([
      ['https://a.example', 20],
      ['https://b.example', 40],
    ]);
    expect(c.upstreamPublicKeys.map((k) => k.name)).toEqual(['test-1']);
    expect(c.upstreamTimeouts.connectMs).toBe(5_000);
  });

  it('maps nested and flat keys to the same setting names', () => {
    const nested = readYamlSettings(
      yamlFile('cache:\n  hostname: x\n  upstream:\n    urls: [https://u.example]\n', 'n.yaml'),
    );
    const flat = readYamlSettings(
      yamlFile('cache-hostname: x\ncache-upstream-urls: [https://u.example]\n', 'f.yaml'),
    );
    expect(nested).toEqual({ 'cache-hostname': 'x', 'cache-upstream-url': ['https://u.example'] });
    expect(flat).toEqual(nested);
  });

  it('accepts the ncps plural names urls and public-keys', () => {
    const file = yamlFile(`
cache:
  hostname: ncps-style
  upstream:
    urls:
      - https://one.example
      - https://two.example?priority=5
    public-keys:
      - ${NIXOS_KEY}
      - ${TEST_KEY}
`);
    const c = load({ file });
    expect(c.upstreams.map((u) => [u.url, u.priority])).toEqual([
      ['https://one.example', 40],
      ['https://two.example', 5],
    ]);
    expect(c.upstreamPublicKeys.map((k) => k.name)).toEqual(['cache.nixos.org-1', 'test-1']);
  });

  it('accepts the flat plural aliases too', () => {
    const raw = readYamlSettings(
      yamlFile(
        `cache-upstream-urls: [https://x.example]\ncache-upstream-public-keys: [${TEST_KEY}]\n`,
      ),
    );
    expect(raw).toEqual({
      'cache-upstream-url': ['https://x.example'],
      'cache-upstream-public-key': [TEST_KEY],
    });
  });

  it('turns YAML numbers and booleans into setting text', () => {
    const raw = readYamlSettings(
      yamlFile('cache:\n  priority: 30\n  sign-narinfo: true\n  max-size: 1024\n'),
    );
    expect(raw).toEqual({
      'cache-priority': '30',
      'cache-sign-narinfo': 'true',
      'cache-max-size': '1024',
    });
  });

  it('skips keys whose value is empty', () => {
    const raw = readYamlSettings(yamlFile('cache:\n  hostname:\n  priority: 3\n'));
    expect(raw).toEqual({ 'cache-priority': '3' });
  });

  it('ignores a section whose keys are all commented out', () => {
    // `cache:` with nothing under it is YAML null, not a setting named "cache".
    const raw = readYamlSettings(yamlFile('server-addr: ":9001"\ncache:\n  # hostname: x\n'));
    expect(raw).toEqual({ 'server-addr': ':9001' });
  });

  it('rejects an unknown key and names it', () => {
    const file = yamlFile('cache:\n  hostnam: typo\n');
    const e = configError(() => load({ file }));
    expect(e.setting).toBe('config');
    expect(e.message.startsWith('--config: ')).toBe(true);
    expect(e.message).toContain('"cache-hostnam"');
  });

  it('rejects an unknown flat key and names it', () => {
    const e = configError(() => readYamlSettings(yamlFile('upstream: https://x.example\n')));
    expect(e.message).toContain('"upstream"');
  });

  it('rejects a file that is not a mapping', () => {
    const e = configError(() => readYamlSettings(yamlFile('- a\n- b\n')));
    expect(e.message.startsWith('--config: ')).toBe(true);
    expect(e.message).toContain('mapping');
  });

  it('rejects invalid YAML and a missing file, naming the file', () => {
    const bad = yamlFile('cache: [unclosed\n', 'bad.yaml');
    const e = configError(() => readYamlSettings(bad));
    expect(e.message.startsWith('--config: ')).toBe(true);
    expect(e.message).toContain(bad);
    const missing = join(dir, 'missing.yaml');
    const m = configError(() => load({ file: missing }));
    expect(m.message).toContain(missing);
  });

  it('validates file values like any other source', () => {
    const e = configError(() => load({ file: yamlFile('cache:\n  max-size: 10X\n') }));
    expect(e.message.startsWith('--cache-max-size: ')).toBe(true);
    const l = configError(() =>
      load({ file: yamlFile('cache:\n  lock-backend: etcd\n', 'l.yaml') }),
    );
    expect(l.message.startsWith('--cache-lock-backend: ')).toBe(true);
    const h = configError(() => load({ file: yamlFile('cache:\n  hostname: [a, b]\n', 'h.yaml') }));
    expect(h.message).toBe('--cache-hostname: given more than once');
  });
});

describe('bad values from env and flags', () => {
  it.each([
    ['server-addr', 'nohost'],
    ['cache-max-size', '12Q'],
    ['cache-upstream-body-timeout', 'forever'],
    ['cache-lru-schedule', 'at midnight'],
    ['log-level', 'chatty'],
    ['cache-upstream-url', 'gopher://x.example'],
    ['cache-upstream-public-key', 'x:notbase64!'],
    ['cache-database-url', 'mongodb://u:p@localhost/narwhal'],
    ['cache-lock-backend', 'etcd'],
  ])('--%s %j', (setting, value) => {
    const fromEnv = configError(() => load({ env: { [envName(setting)]: value } }));
    expect(fromEnv.message.startsWith(`--${setting}: `)).toBe(true);
    const fromFlag = configError(() => load({ flags: { [setting]: value } }));
    expect(fromFlag.message.startsWith(`--${setting}: `)).toBe(true);
  });
});

describe('describeConfig', () => {
  it('shows the settings without secrets', () => {
    const c = load({
      env: {
        CACHE_UPSTREAM_URL:
          'https://alice:hunter2@private.example?priority=1,https://cache.nixos.org',
        CACHE_HOSTNAME: 'shown',
      },
    });
    const d = describeConfig(c);
    const text = JSON.stringify(d);
    expect(text).not.toContain('hunter2');
    expect(text).not.toContain('alice');
    expect(text).not.toContain(c.upstreams[0].authorization!.slice('Basic '.length));
    expect(d.upstreams).toEqual([
      { url: 'https://private.example', priority: 1, auth: true },
      { url: 'https://cache.nixos.org', priority: 40, auth: false },
    ]);
    expect(d.server).toBe('0.0.0.0:8501');
    expect(d.hostname).toBe('shown');
  });
});
