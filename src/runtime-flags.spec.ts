import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { NODE_FLAGS, RUNTIME_ENV } from './runtime-flags';

const ROOT = join(__dirname, '..');
const read = (file: string) => readFileSync(join(ROOT, file), 'utf8');
const MiB = 1024 * 1024;

// Allocates ~200 MiB of short-lived objects and prints the young generation's size afterwards.
const CHURN = `
const keep = [];
for (let i = 0; i < 300000; i++) { keep.push({ a: new Array(8).fill(i), b: 'x' + i }); if (keep.length > 5000) keep.shift(); }
const space = require('v8').getHeapSpaceStatistics().find((s) => s.space_name === 'new_space');
console.log(space.space_size);
`;

describe('Node options narwhal runs with', () => {
  const flags = NODE_FLAGS.join(' ');
  const dir = mkdtempSync(join(tmpdir(), 'narwhal-flags-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const assignments = Object.entries(RUNTIME_ENV)
    .map(([name, value]) => `${name}=${value}`)
    .join(' ');

  it('are the same in npm start, npm run migrate, the executable and the Docker image', () => {
    const scripts = (JSON.parse(read('package.json')) as { scripts: Record<string, string> })
      .scripts;
    expect(scripts.start).toBe(`${assignments} node ${flags} dist/main.js serve`);
    expect(scripts.migrate).toBe(`${assignments} node ${flags} dist/main.js migrate`);
    expect(read('src/main.ts').split('\n')[0]).toBe(
      `#!/usr/bin/env -S ${assignments} node ${flags}`,
    );
    const dockerfile = read('docker/Dockerfile');
    const entrypoint = /^ENTRYPOINT (.*)$/m.exec(dockerfile)?.[1];
    expect(JSON.parse(entrypoint ?? 'null')).toEqual(['node', ...NODE_FLAGS, 'dist/main.js']);
    // The image's last stage (the one that runs) sets the environment.
    const runStage = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
    for (const [name, value] of Object.entries(RUNTIME_ENV)) {
      expect(runStage).toMatch(new RegExp(`^ENV ${name}=${value}$`, 'm'));
    }
  });

  it('set the environment through the shebang', () => {
    const script = join(dir, 'env.js');
    const names = JSON.stringify(Object.keys(RUNTIME_ENV));
    writeFileSync(
      script,
      `${read('src/main.ts').split('\n')[0]}\nconst e = {}; for (const n of ${names}) e[n] = process.env[n]; console.log(JSON.stringify(e));\n`,
    );
    chmodSync(script, 0o755);
    const env = { ...process.env };
    for (const name of Object.keys(RUNTIME_ENV)) delete env[name];
    expect(JSON.parse(execFileSync(script, { encoding: 'utf8', env }))).toEqual(RUNTIME_ENV);
  });

  it('take effect through the shebang: the young generation stays small under churn', () => {
    const script = join(dir, 'churn.js');
    writeFileSync(script, `${read('src/main.ts').split('\n')[0]}\n${CHURN}`);
    chmodSync(script, 0o755);
    const withFlags = Number(execFileSync(script, { encoding: 'utf8' }));
    const without = Number(execFileSync(process.execPath, ['-e', CHURN], { encoding: 'utf8' }));
    expect(withFlags).toBeGreaterThan(0);
    expect(withFlags).toBeLessThanOrEqual(4 * MiB); // two 2 MiB semi-spaces
    expect(without).toBeGreaterThan(4 * MiB); // the test can tell the difference
  });
});
