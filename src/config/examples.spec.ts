import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from './load-config';
import { defaultShown, envName, SETTINGS } from './settings';

const ROOT = join(__dirname, '..', '..');

describe('shipped examples and documentation', () => {
  it.each(['narwhal.yaml', 'ha.yaml'])('config/%s is a valid configuration', (file) => {
    const config = loadConfig({ flags: {}, env: {}, file: join(ROOT, 'config', file), cwd: ROOT });
    expect(config.upstreams.length).toBeGreaterThan(0);
  });

  it('config/ha.yaml selects the production backends', () => {
    const config = loadConfig({
      flags: {},
      env: {},
      file: join(ROOT, 'config', 'ha.yaml'),
      cwd: ROOT,
    });
    expect(config.database.kind).toBe('postgres');
    expect(config.storage.kind).toBe('s3');
    expect(config.lock.kind).toBe('redis');
  });

  it('the README documents every setting with its flag and environment variable', () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const missing = SETTINGS.filter(
      (s) => !readme.includes(`\`--${s.name}\``) || !readme.includes(`\`${envName(s.name)}\``),
    ).map((s) => s.name);
    expect(missing).toEqual([]);
  });

  it("the README's settings table shows each setting's default as the code applies it", () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const shown = new Map<string, string>();
    for (const line of readme.split('\n')) {
      const cells = line.split('|').map((c) => c.trim());
      const flag = /^`--([a-z0-9-]+)`/.exec(cells[1] ?? '');
      if (flag && cells.length >= 5) shown.set(flag[1], cells[3].replace(/`/g, ''));
    }
    const wrong = SETTINGS.filter((s) => shown.get(s.name) !== defaultShown(s)).map(
      (s) => `${s.name}: README says ${JSON.stringify(shown.get(s.name))}, code ${defaultShown(s)}`,
    );
    expect(wrong).toEqual([]);
  });
});
