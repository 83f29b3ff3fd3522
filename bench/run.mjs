#!/usr/bin/env node
// narwhal benchmark: starts the built server as `npm start` does (run `npm run build` first)
// against a synthetic upstream cache on loopback and prints
//   1. narinfo hits: requests/s and latency percentiles,
//   2. narinfo cold lookups (upstream fetch, signature check, database insert),
//   3. a cold NAR fan-out: N clients ask for one large NAR at once (time to first byte, total time,
//      throughput, upstream GETs, narwhal's peak RSS),
//   4. warm NAR throughput from storage.
// Loopback only; every loop is bounded. Settings (environment):
//   BENCH_NAR_MIB=64  BENCH_CLIENTS=20  BENCH_COMPRESSION=xz|zstd|none  BENCH_REQUESTS=2000
//   BENCH_CONCURRENCY=32  BENCH_COLD_NARINFOS=300  NARWHAL_DIST=<dir with main.js> (default ../dist)
//   BENCH_STORAGE=fs|s3 (s3: an s3rver child process)
//   BENCH_KEEP=1 keeps the temporary directory; BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/p"
//   passes node options to the narwhal process.

import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, readFileSync } from 'node:fs';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
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
const { CreateBucketCommand, S3Client } = require('@aws-sdk/client-s3');
const { narInfoFingerprint } = require(join(DIST, 'nix/fingerprint.js'));
const { serializeNarInfo } = require(join(DIST, 'nix/narinfo.js'));
const { NODE_FLAGS, RUNTIME_ENV = {} } = require(join(DIST, 'runtime-flags.js'));
const { formatPublicKey, generateSecretKey, signFingerprint } = require(
  join(DIST, 'signing/keys.js'),
);

const MiB = 1024 * 1024;
const intEnv = (name, def, min, max) => {
  const v = process.env[name];
  if (v === undefined || v === '') return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) {
    console.error(`bench: ${name} must be an integer in ${min}..${max}`);
    process.exit(2);
  }
  return n;
};
const NAR_MIB = intEnv('BENCH_NAR_MIB', 64, 1, 1024);
const CLIENTS = intEnv('BENCH_CLIENTS', 20, 1, 200);
const REQUESTS = intEnv('BENCH_REQUESTS', 2000, 1, 100_000);
const CONCURRENCY = intEnv('BENCH_CONCURRENCY', 32, 1, 512);
const COLD_NARINFOS = intEnv('BENCH_COLD_NARINFOS', 300, 0, 10_000);
const HIT_NARINFOS = 100;
const COMPRESSION = process.env.BENCH_COMPRESSION ?? 'xz';
const STORAGE = process.env.BENCH_STORAGE ?? 'fs';
if (STORAGE !== 'fs' && STORAGE !== 's3') {
  console.error('bench: BENCH_STORAGE must be fs or s3');
  process.exit(2);
}
const EXT = { xz: '.xz', zstd: '.zst', none: '' }[COMPRESSION];
if (EXT === undefined) {
  console.error('bench: BENCH_COMPRESSION must be xz, zstd or none');
  process.exit(2);
}
const STORE = '/nix/store';
const STEP_TIMEOUT_MS = 90_000;

const sha256 = () => createHash('sha256');
const nix32 = (digest) => encodeNix32(digest);
const hashPart = () => encodeNix32(randomBytes(20));
const ms = (ns) => Number(ns) / 1e6;
const now = () => process.hrtime.bigint();

// ---------------------------------------------------------------------------------------------
// Synthetic store paths

/** NAR framing of one regular file whose contents come from `writeContents(stream)`. */
function narString(s) {
  const b = typeof s === 'string' ? Buffer.from(s) : s;
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(b.length));
  return Buffer.concat([len, b, Buffer.alloc((8 - (b.length % 8)) % 8)]);
}

/**
 * Writes a NAR holding one file of `size` bytes that compresses roughly 2:1 (half random, half
 * repetitive text per 64 KiB block, like binaries next to tables), streaming, to `path`.
 */
async function writeBigNar(path, size) {
  const out = createWriteStream(path);
  const write = (buf) =>
    out.write(buf) ? Promise.resolve() : new Promise((r) => out.once('drain', r));
  const head = Buffer.concat(['nix-archive-1', '(', 'type', 'regular', 'contents'].map(narString));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(size));
  await write(head);
  await write(len);
  const text = Buffer.from(
    'narwhal benchmark line: the quick brown fox jumps over the lazy dog 0123456789\n'.repeat(420),
  );
  const BLOCK = 64 * 1024;
  for (let off = 0; off < size; off += BLOCK) {
    const n = Math.min(BLOCK, size - off);
    const block = Buffer.allocUnsafe(n);
    const half = Math.min(n, BLOCK / 2);
    randomBytes(half).copy(block, 0);
    if (n > half) text.copy(block, half, (off / BLOCK) % 64, ((off / BLOCK) % 64) + (n - half));
    await write(block);
  }
  await write(Buffer.alloc((8 - (size % 8)) % 8));
  await write(narString(')'));
  await new Promise((r, j) => out.end((e) => (e ? j(e) : r())));
}

async function hashFile(path) {
  const h = sha256();
  for await (const c of createReadStream(path, { highWaterMark: MiB })) h.update(c);
  return { digest: h.digest(), size: (await stat(path)).size };
}

function compressFile(src, compression) {
  if (compression === 'none') return src;
  const dst = `${src}${EXT}`;
  const args =
    compression === 'xz'
      ? ['-1', '-T0', '-k', '-f', src]
      : ['-q', '-3', '-T0', '-f', src, '-o', dst];
  const r = spawnSync(compression, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) throw new Error(`${compression} failed: ${r.error?.message ?? r.stderr}`);
  return dst;
}

/** A signed narinfo whose NAR is the file at `filePath` (compressed) made from `narPath`. */
async function makeStorePath(key, name, narPath, filePath, compression) {
  const hash = hashPart();
  const nar = await hashFile(narPath);
  const file = filePath === narPath ? nar : await hashFile(filePath);
  const fileHash = nix32(file.digest);
  const info = {
    storePath: `${STORE}/${hash}-${name}`,
    url: `nar/${fileHash}.nar${EXT}`,
    compression,
    fileHash: `sha256:${fileHash}`,
    fileSize: file.size,
    narHash: `sha256:${nix32(nar.digest)}`,
    narSize: nar.size,
    references: [],
    sigs: [],
  };
  info.sigs = [signFingerprint(key, narInfoFingerprint(info, STORE))];
  return { hash, info, text: serializeNarInfo(info), filePath, narName: info.url.slice(4) };
}

/** Small narinfos for the lookup benchmarks (their NARs are never fetched). */
function smallNarInfo(key) {
  const hash = hashPart();
  const narHash = nix32(randomBytes(32));
  const info = {
    storePath: `${STORE}/${hash}-bench-small`,
    url: `nar/${nix32(randomBytes(32))}.nar.xz`,
    compression: 'xz',
    fileHash: `sha256:${nix32(randomBytes(32))}`,
    fileSize: 1234,
    narHash: `sha256:${narHash}`,
    narSize: 4321,
    references: [`${hashPart()}-glibc-2.40`, `${hashPart()}-zlib-1.3`],
    deriver: `${hashPart()}-bench-small.drv`,
    sigs: [],
  };
  info.sigs = [signFingerprint(key, narInfoFingerprint(info, STORE))];
  return { hash, text: serializeNarInfo(info) };
}

// ---------------------------------------------------------------------------------------------
// The upstream cache

function startUpstream() {
  const narinfos = new Map(); // path → text
  const files = new Map(); // path → file path
  const counts = { narinfo: 0, narGet: 0, narHead: 0, other: 0 };
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (narinfos.has(path)) {
      counts.narinfo++;
      const body = narinfos.get(path);
      res.writeHead(200, {
        'content-type': 'text/x-nix-narinfo',
        'content-length': Buffer.byteLength(body),
      });
      res.end(body);
      return;
    }
    if (files.has(path)) {
      const file = files.get(path);
      if (req.method === 'HEAD') counts.narHead++;
      else counts.narGet++;
      stat(file).then(
        (s) => {
          res.writeHead(200, { 'content-type': 'application/x-nix-nar', 'content-length': s.size });
          if (req.method === 'HEAD') return res.end();
          createReadStream(file, { highWaterMark: 256 * 1024 }).pipe(res);
        },
        () => res.writeHead(500).end(),
      );
      return;
    }
    counts.other++;
    res.writeHead(404, { 'content-length': 0 }).end();
  });
  return new Promise((done) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      done({
        url: `http://127.0.0.1:${port}`,
        narinfos,
        files,
        counts,
        close: () => closeServer(server),
      });
    });
  });
}

function closeServer(server) {
  server.closeAllConnections?.();
  return new Promise((r) => server.close(() => r()));
}

async function freePort() {
  const s = createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await closeServer(s);
  return port;
}

// ---------------------------------------------------------------------------------------------
// narwhal as a child process

/** BENCH_STORAGE=s3: an s3rver child process (its memory is not narwhal's) and a fresh bucket. */
async function startS3(dir) {
  const script = `
    const S3rver = require(${JSON.stringify(require.resolve('s3rver'))});
    const s = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: process.argv[1] });
    s.run().then((a) => process.send({ port: a.port }));`;
  const child = spawn(process.execPath, ['-e', script, dir], {
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  const { port } = await new Promise((resolve, reject) => {
    child.once('message', resolve);
    child.once('exit', (code) => reject(new Error(`s3rver exited with ${code}`)));
  });
  const endpoint = `http://127.0.0.1:${port}`;
  const credentials = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };
  const client = new S3Client({ region: 'us-east-1', endpoint, forcePathStyle: true, credentials });
  await client.send(new CreateBucketCommand({ Bucket: 'bench' }));
  client.destroy();
  return {
    env: {
      CACHE_STORAGE_S3_BUCKET: 'bench',
      CACHE_STORAGE_S3_ENDPOINT: endpoint,
      CACHE_STORAGE_S3_ACCESS_KEY_ID: credentials.accessKeyId,
      CACHE_STORAGE_S3_SECRET_ACCESS_KEY: credentials.secretAccessKey,
      CACHE_STORAGE_S3_FORCE_PATH_STYLE: 'true',
    },
    stop: () => child.kill(),
  };
}

async function startNarwhal(dataPath, upstream, publicKey, extraEnv = {}) {
  const port = await freePort();
  const nodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
  // Launched like `npm start` (the same Node options), plus BENCH_NODE_ARGS.
  const child = spawn(process.execPath, [...NODE_FLAGS, ...nodeArgs, MAIN, 'serve'], {
    cwd: dirname(DIST),
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      ...RUNTIME_ENV,
      SERVER_ADDR: `127.0.0.1:${port}`,
      CACHE_DATA_PATH: dataPath,
      CACHE_UPSTREAM_URL: upstream.url,
      CACHE_UPSTREAM_PUBLIC_KEY: publicKey,
      CACHE_HOSTNAME: 'narwhal-bench',
      LOG_LEVEL: 'warn',
      ...extraEnv,
    },
  });
  let output = '';
  child.stdout.on('data', (c) => (output = (output + c).slice(-20_000)));
  child.stderr.on('data', (c) => (output = (output + c).slice(-20_000)));
  let exited = null;
  const exitPromise = new Promise((r) =>
    child.once('exit', (code, signal) => r((exited = { code, signal }))),
  );
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited) throw new Error(`narwhal exited (${JSON.stringify(exited)}):\n${output}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`narwhal not healthy within 30 s:\n${output}`);
    }
    const status = await get(`${base}/healthz`, { agent: false }).then(
      (r) => r.status,
      () => 0,
    );
    if (status === 200) break;
    await sleep(100);
  }
  return {
    base,
    pid: child.pid,
    output: () => output,
    exited: () => exited,
    stop: async () => {
      if (exited) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exitPromise;
      clearTimeout(t);
    },
  };
}

function procStatus(pid) {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
    return { rss: kb('VmRSS') * 1024, hwm: kb('VmHWM') * 1024 };
  } catch {
    return { rss: NaN, hwm: NaN };
  }
}

/** Resets the process's peak RSS (VmHWM), if the kernel allows; returns whether it did. */
async function resetPeakRss(pid) {
  try {
    const fh = await open(`/proc/${pid}/clear_refs`, 'w');
    await fh.write('5');
    await fh.close();
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP client

/** GET (or HEAD); hashes the body as it streams, never keeps it. */
function get(url, { agent, method = 'GET', hash = false, onFirstByte } = {}) {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, agent }, (res) => {
      const h = hash ? sha256() : null;
      let bytes = 0;
      let first = true;
      res.on('data', (c) => {
        if (first) {
          first = false;
          onFirstByte?.();
        }
        bytes += c.length;
        h?.update(c);
      });
      res.on('error', reject);
      res.on('end', () =>
        resolve({
          status: res.statusCode,
          headers: res.headers,
          bytes,
          complete: res.complete,
          digest: h?.digest(),
        }),
      );
    });
    req.setTimeout(STEP_TIMEOUT_MS, () => req.destroy(new Error(`timeout: ${url}`)));
    req.on('error', reject);
    req.end();
  });
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** Runs `total` requests from `concurrency` workers; returns latencies (ms) and elapsed (ms). */
async function load(total, concurrency, makeUrl, agent) {
  const latencies = [];
  let next = 0;
  let failures = 0;
  const started = now();
  const worker = async () => {
    while (next < total) {
      const i = next++;
      const t0 = now();
      const r = await get(makeUrl(i), { agent });
      latencies.push(ms(now() - t0));
      if (r.status !== 200) failures++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, total) }, worker));
  const elapsed = ms(now() - started);
  latencies.sort((a, b) => a - b);
  return { latencies, elapsed, failures };
}

// ---------------------------------------------------------------------------------------------
// Report

const rows = [];
const row = (section, metric, value) => rows.push([section, metric, value]);
const fmt = (n, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : 'n/a');
const mib = (b) => `${fmt(b / MiB)} MiB`;

function printTable() {
  const w0 = Math.max(...rows.map((r) => r[0].length), 7);
  const w1 = Math.max(...rows.map((r) => r[1].length), 6);
  const w2 = Math.max(...rows.map((r) => String(r[2]).length), 5);
  const line = `+-${'-'.repeat(w0)}-+-${'-'.repeat(w1)}-+-${'-'.repeat(w2)}-+`;
  console.log(line);
  console.log(`| ${'section'.padEnd(w0)} | ${'metric'.padEnd(w1)} | ${'value'.padStart(w2)} |`);
  console.log(line);
  let last = '';
  for (const [s, m, v] of rows) {
    if (last && s !== last) console.log(line);
    console.log(
      `| ${(s === last ? '' : s).padEnd(w0)} | ${m.padEnd(w1)} | ${String(v).padStart(w2)} |`,
    );
    last = s;
  }
  console.log(line);
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const started = Date.now();
  const work = await mkdtemp(join(tmpdir(), 'narwhal-bench-'));
  let upstream;
  let narwhal;
  let s3;
  let perClientTtfb = '';
  try {
    const key = generateSecretKey('bench-upstream-1');
    upstream = await startUpstream();

    // The big NAR.
    const t0 = Date.now();
    const narPath = join(work, 'big.nar');
    await writeBigNar(narPath, NAR_MIB * MiB);
    const filePath = compressFile(narPath, COMPRESSION);
    const big = await makeStorePath(key, 'bench-big', narPath, filePath, COMPRESSION);
    upstream.narinfos.set(`/${big.hash}.narinfo`, big.text);
    upstream.files.set(`/${big.info.url}`, filePath);
    const prepMs = Date.now() - t0;

    const hits = Array.from({ length: HIT_NARINFOS }, () => smallNarInfo(key));
    const colds = Array.from({ length: COLD_NARINFOS }, () => smallNarInfo(key));
    for (const n of [...hits, ...colds]) upstream.narinfos.set(`/${n.hash}.narinfo`, n.text);

    if (STORAGE === 's3') s3 = await startS3(join(work, 's3'));
    narwhal = await startNarwhal(join(work, 'data'), upstream, formatPublicKey(key), s3?.env);
    const base = narwhal.base;
    const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY });
    console.log(
      `narwhal pid ${narwhal.pid} at ${base}; upstream ${upstream.url}; NAR ${NAR_MIB} MiB ` +
        `(${COMPRESSION}, ${mib(big.info.fileSize)} on the wire), prepared in ${prepMs} ms`,
    );
    row('setup', 'NAR size / file size', `${mib(big.info.narSize)} / ${mib(big.info.fileSize)}`);
    row('setup', 'compression', COMPRESSION);
    row('setup', 'storage', STORAGE);
    row('setup', 'narwhal RSS after start', mib(procStatus(narwhal.pid).rss));

    // 1. narinfo hits: warm each once, then measure.
    for (const n of hits) {
      const r = await get(`${base}/${n.hash}.narinfo`, { agent });
      if (r.status !== 200)
        throw new Error(`warm-up narinfo answered ${r.status}\n${narwhal.output()}`);
    }
    await load(
      Math.min(200, REQUESTS),
      CONCURRENCY,
      (i) => `${base}/${hits[i % hits.length].hash}.narinfo`,
      agent,
    );
    const before = upstream.counts.narinfo;
    const hit = await load(
      REQUESTS,
      CONCURRENCY,
      (i) => `${base}/${hits[i % hits.length].hash}.narinfo`,
      agent,
    );
    row('narinfo hit', 'requests x concurrency', `${REQUESTS} x ${CONCURRENCY}`);
    row('narinfo hit', 'requests/s', fmt(REQUESTS / (hit.elapsed / 1000), 0));
    row(
      'narinfo hit',
      'latency p50 / p99 / max',
      `${fmt(percentile(hit.latencies, 50), 2)} / ${fmt(percentile(hit.latencies, 99), 2)} / ${fmt(hit.latencies.at(-1), 2)} ms`,
    );
    row('narinfo hit', 'non-200 answers', hit.failures);
    row('narinfo hit', 'upstream requests', upstream.counts.narinfo - before);

    // 2. cold narinfo lookups (each goes upstream once).
    if (COLD_NARINFOS > 0) {
      const c0 = upstream.counts.narinfo;
      const cold = await load(
        COLD_NARINFOS,
        CONCURRENCY,
        (i) => `${base}/${colds[i].hash}.narinfo`,
        agent,
      );
      row('narinfo cold', 'lookups x concurrency', `${COLD_NARINFOS} x ${CONCURRENCY}`);
      row('narinfo cold', 'lookups/s', fmt(COLD_NARINFOS / (cold.elapsed / 1000), 0));
      row(
        'narinfo cold',
        'latency p50 / p99',
        `${fmt(percentile(cold.latencies, 50), 2)} / ${fmt(percentile(cold.latencies, 99), 2)} ms`,
      );
      row(
        'narinfo cold',
        'non-200 / upstream requests',
        `${cold.failures} / ${upstream.counts.narinfo - c0}`,
      );
    }

    // 3. cold NAR fan-out.
    const info = await get(`${base}/${big.hash}.narinfo`, { agent: false });
    if (info.status !== 200) throw new Error(`big narinfo answered ${info.status}`);
    const narUrl = `${base}/${big.info.url}`;
    const resetOk = await resetPeakRss(narwhal.pid);
    const rssBefore = procStatus(narwhal.pid).rss;
    let sampledPeak = rssBefore;
    const sampler = setInterval(() => {
      const r = procStatus(narwhal.pid).rss;
      if (r > sampledPeak) sampledPeak = r;
    }, 25);
    const gets0 = upstream.counts.narGet;
    const fanStart = now();
    const ttfb = new Array(CLIENTS).fill(NaN);
    const done = new Array(CLIENTS).fill(NaN);
    const results = await Promise.all(
      Array.from({ length: CLIENTS }, (_, i) =>
        get(narUrl, {
          agent: false,
          hash: true,
          onFirstByte: () => (ttfb[i] = ms(now() - fanStart)),
        }).then(
          (r) => ((done[i] = ms(now() - fanStart)), r),
          (e) => ({ status: 0, error: e.message }),
        ),
      ),
    );
    const fanMs = ms(now() - fanStart);
    clearInterval(sampler);
    const peak = procStatus(narwhal.pid);
    const expected = big.info.fileHash.slice('sha256:'.length);
    const good = results.filter(
      (r) => r.status === 200 && r.complete && r.digest && nix32(r.digest) === expected,
    );
    const sources = new Set(results.map((r) => r.headers?.['x-narwhal-source'] ?? r.error ?? '?'));
    const sortedTtfb = [...ttfb].sort((a, b) => a - b);
    row('NAR cold fan-out', 'clients', CLIENTS);
    row('NAR cold fan-out', 'correct complete bodies', `${good.length} / ${CLIENTS}`);
    row('NAR cold fan-out', 'x-narwhal-source', [...sources].join(','));
    row('NAR cold fan-out', 'upstream NAR GETs', upstream.counts.narGet - gets0);
    row(
      'NAR cold fan-out',
      'TTFB min / p50 / max',
      `${fmt(sortedTtfb[0], 0)} / ${fmt(percentile(sortedTtfb, 50), 0)} / ${fmt(sortedTtfb.at(-1), 0)} ms`,
    );
    row(
      'NAR cold fan-out',
      'first / last client done',
      `${fmt(Math.min(...done), 0)} / ${fmt(Math.max(...done), 0)} ms`,
    );
    row('NAR cold fan-out', 'total time', `${fmt(fanMs, 0)} ms`);
    row(
      'NAR cold fan-out',
      'upstream rate (1 file)',
      `${fmt(big.info.fileSize / MiB / (Math.min(...done) / 1000))} MiB/s`,
    );
    row(
      'NAR cold fan-out',
      'aggregate to clients',
      `${fmt((CLIENTS * big.info.fileSize) / MiB / (fanMs / 1000))} MiB/s`,
    );
    row('NAR cold fan-out', 'narwhal RSS before', mib(rssBefore));
    row(
      'NAR cold fan-out',
      resetOk ? 'narwhal peak RSS (VmHWM)' : 'narwhal VmHWM (since start)',
      mib(peak.hwm),
    );
    row('NAR cold fan-out', 'narwhal peak RSS (sampled)', mib(sampledPeak));

    perClientTtfb = ttfb.map((t) => fmt(t, 0)).join(' ');

    // 4. warm NAR from storage.
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    for (;;) {
      const h = await get(narUrl, { agent: false, method: 'HEAD' });
      const probe = await get(narUrl, { agent: false });
      if (probe.headers['x-narwhal-source'] === 'storage') break;
      if (Date.now() > deadline)
        throw new Error(`NAR not in storage after the fan-out (HEAD ${h.status})`);
      await sleep(100);
    }
    const g0 = upstream.counts.narGet;
    const w1 = now();
    const single = await get(narUrl, { agent: false, hash: true });
    const singleMs = ms(now() - w1);
    const w2 = now();
    const warm = await Promise.all(
      Array.from({ length: CLIENTS }, () => get(narUrl, { agent: false, hash: true })),
    );
    const warmMs = ms(now() - w2);
    const warmGood = warm.filter(
      (r) => r.status === 200 && r.complete && nix32(r.digest) === expected,
    ).length;
    row(
      'NAR warm (storage)',
      '1 client',
      `${fmt(big.info.fileSize / MiB / (singleMs / 1000))} MiB/s (${fmt(singleMs, 0)} ms)`,
    );
    row(
      'NAR warm (storage)',
      `${CLIENTS} clients aggregate`,
      `${fmt((CLIENTS * big.info.fileSize) / MiB / (warmMs / 1000))} MiB/s (${fmt(warmMs, 0)} ms)`,
    );
    row(
      'NAR warm (storage)',
      'correct bodies',
      `${warmGood + (nix32(single.digest) === expected ? 1 : 0)} / ${CLIENTS + 1}`,
    );
    row('NAR warm (storage)', 'upstream NAR GETs', upstream.counts.narGet - g0);
    row('NAR warm (storage)', 'narwhal RSS after', mib(procStatus(narwhal.pid).rss));
    row('run', 'wall time', `${fmt((Date.now() - started) / 1000)} s`);
    agent.destroy();
    if (narwhal.exited()) throw new Error(`narwhal exited during the run:\n${narwhal.output()}`);
  } finally {
    await narwhal?.stop();
    await upstream?.close();
    s3?.stop();
    if (process.env.BENCH_KEEP === '1') console.log(`kept ${work}`);
    else await rm(work, { recursive: true, force: true });
  }
  printTable();
  if (perClientTtfb)
    console.log(`cold fan-out time to first byte per client (ms): ${perClientTtfb}`);
}

main().catch((e) => {
  console.error(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  process.exitCode = 1;
});
