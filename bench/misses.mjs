#!/usr/bin/env node
// narwhal miss benchmark (not part of CI): starts the built server (run `npm run build` first)
// in front of two loopback upstreams that have nothing and answer every narinfo with a 404 after
// a delay, and prints
//   1. miss latency, one request at a time for distinct hashes: upstreams asked one after another
//      (--cache-upstream-hedge=false, what narwhal did before) vs all at once (the default);
//   2. 1,000 repeated misses of one hash (32 concurrent): upstream requests with the negative cache
//      (--cache-negative-ttl, default 1m) and without it (0).
// Loopback only; every loop is bounded. Settings (environment):
//   BENCH_FIRST_DELAY_MS=300  BENCH_SECOND_DELAY_MS=200  BENCH_MISSES=20  BENCH_REPEATS=1000
//   BENCH_CONCURRENCY=32  NARWHAL_DIST=<dir with main.js> (default ../dist)

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { Agent, createServer, request } from 'node:http';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const DIST = resolve(process.env.NARWHAL_DIST ?? join(HERE, '..', 'dist'));
const MAIN = join(DIST, 'main.js');
if (!existsSync(MAIN)) {
  console.error(`bench: ${MAIN} not found; run \`npm run build\` first (or set NARWHAL_DIST).`);
  process.exit(2);
}
const require = createRequire(import.meta.url);
const { encodeNix32 } = require(join(DIST, 'nix/base32.js'));
const { NODE_FLAGS, RUNTIME_ENV = {} } = require(join(DIST, 'runtime-flags.js'));

const num = (name, def) => {
  const n = Number(process.env[name] ?? def);
  if (!Number.isInteger(n) || n < 0 || n > 100_000) {
    console.error(`bench: ${name} must be an integer in 0..100000`);
    process.exit(2);
  }
  return n;
};
const FIRST_DELAY = num('BENCH_FIRST_DELAY_MS', 300);
const SECOND_DELAY = num('BENCH_SECOND_DELAY_MS', 200);
const MISSES = num('BENCH_MISSES', 20);
const REPEATS = num('BENCH_REPEATS', 1000);
const CONCURRENCY = num('BENCH_CONCURRENCY', 32);
const KEY = 'bench-1:d8+pFuppcWDFjG1rF7876FZr+FwLvafi4PhlsZuFrUM=';

const hashPart = () => encodeNix32(randomBytes(20));
const agent = new Agent({ keepAlive: true, maxSockets: 64 });

/** An upstream with nothing in it: every narinfo is a 404 after `delayMs`; counts the requests. */
async function emptyUpstream(delayMs) {
  const counts = new Map();
  const server = createServer((req, res) => {
    if (req.url === '/nix-cache-info') return res.end('StoreDir: /nix/store\n');
    counts.set(req.url, (counts.get(req.url) ?? 0) + 1);
    setTimeout(() => res.writeHead(404, { 'content-length': 0 }).end(), delayMs);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    count: (path) => counts.get(path) ?? 0,
    close: () => new Promise((r) => (server.closeAllConnections(), server.close(r))),
  };
}

function get(url) {
  return new Promise((done, fail) => {
    const req = request(url, { agent }, (res) => {
      res.resume();
      res.on('end', () => done(res.statusCode));
    });
    req.on('error', fail);
    req.end();
  });
}

async function freePort() {
  const s = createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

async function startNarwhal(upstreams, env) {
  const dataPath = await mkdtemp(join(tmpdir(), 'narwhal-bench-misses-'));
  const port = await freePort();
  const child = spawn(process.execPath, [...NODE_FLAGS, MAIN, 'serve'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      ...RUNTIME_ENV,
      SERVER_ADDR: `127.0.0.1:${port}`,
      CACHE_DATA_PATH: dataPath,
      CACHE_UPSTREAM_URL: upstreams.map((u, i) => `${u.url}?priority=${10 * (i + 1)}`).join(','),
      CACHE_UPSTREAM_PUBLIC_KEY: KEY,
      CACHE_HOSTNAME: 'narwhal-bench',
      LOG_LEVEL: 'warn',
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
    if ((await get(`${base}/healthz`).catch(() => 0)) === 200) break;
    await sleep(100);
  }
  return {
    base,
    stop: async () => {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
      await rm(dataPath, { recursive: true, force: true });
    },
  };
}

const percentile = (sorted, p) =>
  sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];

/** MISSES distinct misses, one at a time: latency per request. */
async function missLatency(hedge) {
  const upstreams = [await emptyUpstream(FIRST_DELAY), await emptyUpstream(SECOND_DELAY)];
  const nw = await startNarwhal(upstreams, {
    CACHE_UPSTREAM_HEDGE: String(hedge),
    CACHE_NEGATIVE_TTL: '0',
  });
  try {
    await get(`${nw.base}/${hashPart()}.narinfo`); // warm-up: connections, database
    const times = [];
    for (let i = 0; i < MISSES; i++) {
      const began = performance.now();
      const status = await get(`${nw.base}/${hashPart()}.narinfo`);
      if (status !== 404) throw new Error(`expected 404, got ${status}`);
      times.push(performance.now() - began);
    }
    times.sort((a, b) => a - b);
    return { p50: percentile(times, 0.5), p90: percentile(times, 0.9), max: times.at(-1) };
  } finally {
    await nw.stop();
    for (const u of upstreams) await u.close();
  }
}

/** REPEATS requests for one hash, CONCURRENCY at a time: upstream requests it caused. */
async function repeatedMisses(ttl) {
  const upstreams = [await emptyUpstream(FIRST_DELAY), await emptyUpstream(SECOND_DELAY)];
  const nw = await startNarwhal(upstreams, { CACHE_NEGATIVE_TTL: ttl });
  try {
    const hash = hashPart();
    let next = 0;
    const began = performance.now();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < REPEATS) {
          next++;
          const status = await get(`${nw.base}/${hash}.narinfo`);
          if (status !== 404) throw new Error(`expected 404, got ${status}`);
        }
      }),
    );
    const seconds = (performance.now() - began) / 1000;
    const path = `/${hash}.narinfo`;
    return { first: upstreams[0].count(path), second: upstreams[1].count(path), seconds };
  } finally {
    await nw.stop();
    for (const u of upstreams) await u.close();
  }
}

const f = (ms) => `${ms.toFixed(0)} ms`;
console.log(
  `two empty upstreams: the first answers 404 after ${FIRST_DELAY} ms, the second after ${SECOND_DELAY} ms`,
);
for (const hedge of [false, true]) {
  const r = await missLatency(hedge);
  console.log(
    `miss latency, ${hedge ? 'hedged (all at once)   ' : 'one after another       '}: ` +
      `p50 ${f(r.p50)}, p90 ${f(r.p90)}, max ${f(r.max)} (${MISSES} misses)`,
  );
}
for (const ttl of ['1m', '0']) {
  const r = await repeatedMisses(ttl);
  console.log(
    `${REPEATS} misses of one hash, ${CONCURRENCY} concurrent, --cache-negative-ttl ${ttl.padEnd(2)}: ` +
      `${r.first} + ${r.second} upstream requests, ${Math.round(REPEATS / r.seconds)} requests/s`,
  );
}
agent.destroy();
