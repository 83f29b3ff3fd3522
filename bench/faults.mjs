#!/usr/bin/env node
// narwhal fault suite, heavy mode (not part of CI): runs test/faults with NARWHAL_FAULTS_HEAVY=1 —
// 50,000 fuzzed requests, a 1 GiB xz bomb, 2,000 idle and 500 slowloris connections held for 100 s,
// 10 kill -9 loops, a 30 s database outage, 64 MiB slow-reader NARs and a 1 GiB fast one — and
// prints every figure the tests measured, for the README's "Failure behaviour" table.
// `npm run bench:faults` builds first; or run `node bench/faults.mjs [vitest args…]` after
// `npm run build` (e.g. `node bench/faults.mjs test/faults/fuzz.e2e-spec.ts`).
// NARWHAL_FAULTS_HEAVY=0 runs the CI sizes instead; NARWHAL_FUZZ_SEED=<n> repeats a fuzzing run.
// Needs what `npm test` needs (PostgreSQL, MariaDB, the Nix client) and root for the tmpfs.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const MARK = '[faults]';

if (!existsSync(join(ROOT, 'dist', 'main.js'))) {
  console.error('faults: dist/main.js not found; run `npm run build` first.');
  process.exit(2);
}

const files = process.argv.slice(2);
const heavy = process.env.NARWHAL_FAULTS_HEAVY ?? '1';
const args = ['vitest', 'run', '--project', 'e2e', ...(files.length ? files : ['test/faults'])];
const started = Date.now();
const figures = [];
let pending = '';

const child = spawn('npx', args, {
  cwd: ROOT,
  env: { ...process.env, NARWHAL_FAULTS_HEAVY: heavy },
  stdio: ['ignore', 'pipe', 'inherit'],
});
child.stdout.on('data', (chunk) => {
  process.stdout.write(chunk);
  pending += chunk.toString('utf8');
  const lines = pending.split('\n');
  pending = lines.pop();
  for (const line of lines) if (line.startsWith(MARK)) figures.push(line.slice(MARK.length + 1));
});
child.on('close', (code) => {
  const minutes = ((Date.now() - started) / 60_000).toFixed(1);
  console.log(
    `\n=== narwhal fault suite figures (NARWHAL_FAULTS_HEAVY=${heavy}, ${minutes} min) ===`,
  );
  console.log(`command: NARWHAL_FAULTS_HEAVY=${heavy} npx ${args.join(' ')}`);
  for (const f of figures) console.log(`- ${f}`);
  if (code !== 0) console.log(`\nvitest exited with ${code}: some fault tests FAILED (see above).`);
  process.exit(code ?? 1);
});
