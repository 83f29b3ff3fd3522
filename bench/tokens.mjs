#!/usr/bin/env node
// narwhal read-token benchmark (not part of CI): what --cache-require-read-token costs on the hot
// path. Starts the built server (run `npm run build` first) on one data path, pushes one store path
// into it (a NAR and its narinfo, with a write token made by `narwhal token create`), then, round
// after round, serves narinfo hits of it with wrk — once with reads open (no guard at all) and once
// with reads behind a token sent as HTTP Basic auth, as Nix sends it — and prints requests per
// second and the server's CPU time per request (from /proc/<pid>/stat) for each, and the medians.
// Needs `wrk` on PATH. Loopback only. Settings (environment):
//   BENCH_ROUNDS=3  BENCH_SECONDS=10  BENCH_CONNECTIONS=32  NARWHAL_DIST=<dir with main.js>

import { execFile, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const HERE = dirname(fileURLToPath(import.meta.url));
const DIST = resolve(process.env.NARWHAL_DIST ?? join(HERE, '..', 'dist'));
const MAIN = join(DIST, 'main.js');
if (!existsSync(MAIN)) {
  console.error(`bench: ${MAIN} not found; run \`npm run build\` first (or set NARWHAL_DIST).`);
  process.exit(2);
}
if (spawnSync('wrk', ['--version']).error) {
  console.error('bench: wrk is not on PATH (apt-get install wrk)');
  process.exit(2);
}
const require = createRequire(import.meta.url);
const { encodeNix32 } = require(join(DIST, 'nix/base32.js'));
const { serializeNarInfo } = require(join(DIST, 'nix/narinfo.js'));
const { NODE_FLAGS, RUNTIME_ENV = {} } = require(join(DIST, 'runtime-flags.js'));

const num = (name, def) => {
  const n = Number(process.env[name] ?? def);
  if (!Number.isInteger(n) || n < 1 || n > 10_000) {
    console.error(`bench: ${name} must be an integer in 1..10000`);
    process.exit(2);
  }
  return n;
};
const ROUNDS = num('BENCH_ROUNDS', 3);
const SECONDS = num('BENCH_SECONDS', 10);
const CONNECTIONS = num('BENCH_CONNECTIONS', 32);
const KEY = 'bench-1:d8+pFuppcWDFjG1rF7876FZr+FwLvafi4PhlsZuFrUM=';
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout) || 100;
const run = promisify(execFile);

const nix32 = (bytes) => encodeNix32(createHash('sha256').update(bytes).digest());

/** A NAR of one regular file (`nix-archive-1`). */
function narOf(contents) {
  const parts = [];
  const str = (s) => {
    const b = Buffer.from(s);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(b.length));
    parts.push(len, b, Buffer.alloc((8 - (b.length % 8)) % 8));
  };
  for (const s of ['nix-archive-1', '(', 'type', 'regular', 'contents']) str(s);
  str(contents);
  str(')');
  return Buffer.concat(parts);
}

async function freePort() {
  const s = createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

function settings(dataPath) {
  return { CACHE_DATA_PATH: dataPath, CACHE_HOSTNAME: 'narwhal-bench', LOG_LEVEL: 'warn' };
}

async function startNarwhal(dataPath, env) {
  const port = await freePort();
  const child = spawn(process.execPath, [...NODE_FLAGS, MAIN, 'serve'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      ...RUNTIME_ENV,
      ...settings(dataPath),
      SERVER_ADDR: `127.0.0.1:${port}`,
      // Nothing is asked of it: the benchmark serves what was pushed.
      CACHE_UPSTREAM_URL: 'http://127.0.0.1:9',
      CACHE_UPSTREAM_PUBLIC_KEY: KEY,
      ...env,
    },
  });
  let output = '';
  child.stdout.on('data', (c) => (output = (output + c).slice(-10_000)));
  child.stderr.on('data', (c) => (output = (output + c).slice(-10_000)));
  const base = `http://127.0.0.1:${port}`;
  for (let tries = 0; ; tries++) {
    if (child.exitCode !== null || tries > 300)
      throw new Error(`narwhal did not start:\n${output}`);
    if ((await fetch(`${base}/healthz`).catch(() => null))?.status === 200) break;
    await sleep(100);
  }
  return {
    base,
    cpuSeconds: () => {
      const fields = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1].split(' ');
      return (Number(fields[11]) + Number(fields[12])) / CLK_TCK; // utime + stime
    },
    stop: async () => {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

async function cli(dataPath, args) {
  const { stdout } = await run(process.execPath, [...NODE_FLAGS, MAIN, ...args], {
    env: { ...process.env, ...RUNTIME_ENV, ...settings(dataPath) },
  });
  return stdout.trim();
}

/** wrk for SECONDS against `url` with `header`: requests per second, server CPU µs per request. */
async function measure(nw, url, header) {
  const args = ['-t1', `-c${CONNECTIONS}`, '-H', header, url];
  await run('wrk', ['-d2s', ...args]); // warm-up
  const cpu0 = nw.cpuSeconds();
  const { stdout } = await run('wrk', [`-d${SECONDS}s`, ...args]);
  const cpu = nw.cpuSeconds() - cpu0;
  const requests = Number(/(\d+) requests in/.exec(stdout)[1]);
  if (/Non-2xx/.test(stdout)) throw new Error(`wrk saw errors:\n${stdout}`);
  return { rps: requests / SECONDS, cpuUs: (cpu * 1e6) / requests };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main() {
  const dataPath = await mkdtemp(join(tmpdir(), 'narwhal-bench-tokens-'));
  try {
    // One pushed store path to serve.
    const writer = await cli(dataPath, ['token', 'create', '--name', 'ci', '--perm', 'write']);
    const reader = await cli(dataPath, ['token', 'create', '--name', 'fleet', '--perm', 'read']);
    const nar = narOf(Buffer.from('benchmark\n'));
    const hash = encodeNix32(createHash('sha1').update(String(Date.now())).digest());
    const fileHash = nix32(nar);
    const narinfo = serializeNarInfo({
      storePath: `/nix/store/${hash}-bench`,
      url: `nar/${fileHash}.nar`,
      compression: 'none',
      fileHash: `sha256:${fileHash}`,
      fileSize: nar.length,
      narHash: `sha256:${fileHash}`,
      narSize: nar.length,
      references: [],
      sigs: [],
    });
    const pusher = await startNarwhal(dataPath, { CACHE_ALLOW_PUT_VERB: 'true' });
    const auth = { authorization: `Bearer ${writer}` };
    for (const [path, body] of [
      [`nar/${fileHash}.nar`, nar],
      [`${hash}.narinfo`, narinfo],
    ]) {
      const res = await fetch(`${pusher.base}/${path}`, { method: 'PUT', headers: auth, body });
      if (res.status !== 200) throw new Error(`PUT /${path}: ${res.status} ${await res.text()}`);
    }
    await pusher.stop();

    const basic = `Authorization: Basic ${Buffer.from(`nix:${reader}`).toString('base64')}`;
    const results = { open: [], token: [] };
    for (let round = 1; round <= ROUNDS; round++) {
      for (const kind of ['open', 'token']) {
        const nw = await startNarwhal(
          dataPath,
          kind === 'token' ? { CACHE_REQUIRE_READ_TOKEN: 'true' } : {},
        );
        try {
          const r = await measure(
            nw,
            `${nw.base}/${hash}.narinfo`,
            kind === 'token' ? basic : 'X-Bench: 1',
          );
          results[kind].push(r);
          console.log(
            `round ${round} ${kind === 'open' ? 'reads open   ' : 'read token   '}: ${Math.round(r.rps)} req/s, ${r.cpuUs.toFixed(1)} µs CPU/request`,
          );
        } finally {
          await nw.stop();
        }
      }
    }
    for (const kind of ['open', 'token']) {
      const rs = results[kind];
      console.log(
        `median ${kind === 'open' ? 'reads open' : 'read token'}: ${Math.round(median(rs.map((r) => r.rps)))} req/s, ${median(rs.map((r) => r.cpuUs)).toFixed(1)} µs CPU/request`,
      );
    }
  } finally {
    await rm(dataPath, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
