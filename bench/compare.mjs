#!/usr/bin/env node
// narwhal vs. the nginx proxy_cache recipe, side by side, in one run (not part of `npm test` or CI).
//
// Starts, on loopback:
//   - a synthetic upstream binary cache (a child Node process) serving the narinfos and NARs of a
//     `file://` cache that the real Nix client made, with NAR responses throttled per response and
//     an optional fixed latency added to every request; it counts requests per path;
//   - an nginx proxy_cache peer as the NixOS-wiki recipe has it (`proxy_cache` + `proxy_cache_lock`,
//     `sendfile on`, `access_log off`), a non-daemon child with its own config, cache and temp dirs;
//   - narwhal (`dist/main.js serve` with NODE_FLAGS and RUNTIME_ENV from dist/runtime-flags.js, as
//     bench/run.mjs)
//     on its defaults (info access log on) plus `--prometheus-enabled true`, a fresh data path,
//     trusting the upstream's key;
// and measures both peers with the same load (wrk for request rates, curl and Node clients for
// NARs, the real `nix copy` for closures), then prints a table with both figures and the ratio
// narwhal/nginx on stdout (progress goes to stderr).
//
// Measures (BENCH_MODE selects them):
//   hot        hot narinfo: wrk req/s over 100 warm narinfo URLs, and p50/p99 latency of one
//              keep-alive connection making 2,000 sequential requests; hot small NAR (a ~150-byte
//              .nar.xz): wrk req/s; hot big NAR: 20 sequential curl downloads and 16 parallel ones.
//              Rates and latency are measured in 3 rounds with the peers alternating (nginx,
//              narwhal, narwhal, nginx, …; the bare node:http reference with them), each peer's
//              median round reported: this host's speed drifts within minutes.
//   cold-herd  24 clients at once for one cold big .nar.xz (upstream throttled), each a curl process
//              piping to sha256sum: wall time, mean and max time to first body byte (as each curl
//              saw it), upstream GETs of it (must be 1), sha256 of every body, the server's CPU time;
//              then one cold client of another big NAR vs. the same download straight from upstream.
//              Both in 3 rounds, each with big NARs of its own (cold once), the peers taking turns;
//              each one's median round reported (upstream GETs: the most, bodies: the fewest).
//   closure    a real `nix copy` of a closure of BENCH_CLOSURE_PATHS small paths + a top path + one
//              big path into a fresh store with a fresh client cache: cold (straight from the
//              upstream, through nginx, through narwhal), then warm: five copies through each peer,
//              the peers taking turns, the first and the median reported (the first is a
//              just-started narwhal's).
//   cold-closure  only the cold copies, with the upstream adding 20 ms per request by default
//              (issue 15's setup: "a cache across a continent"), then two more cold copies through
//              narwhal with part of its prefetch off (narinfos only, none) to show what each part
//              is worth; BENCH_PREFETCH_VARIANTS=0 skips them.
//   cold-requests  what one cold request costs: one client asking, one after another on one
//              keep-alive connection (as `nix copy` does), for the narinfo and then the NAR of each
//              small path of the closure, straight from the upstream, through a fresh nginx and
//              through a fresh narwhal with its prefetch off (so that every request is a miss it
//              answers itself): p50 and mean latency of the cold narinfos and of the cold NARs, and
//              the peer's CPU time per pair (narwhal's also for its event-loop thread alone); the
//              first third of the paths only warms up (JIT).
//   all        (default) closure, hot and cold-herd, in that order.
// Every mode also reports the peak RSS of narwhal (VmHWM) and of nginx (sum over its processes).
//
// The closure and the big NARs are built once with the real Nix client (Nix 2.8, as root, no daemon)
// and published, signed with a generated key, as an xz `file://` cache under .bench-tmp/ (or
// BENCH_CACHE_DIR), keyed by the Nix expression: later runs reuse it. The first run takes a few
// minutes (300 builds, xz of the big NARs).
//
// Settings (environment):
//   BENCH_MODE=all|hot|cold-herd|closure|cold-closure|cold-requests   what to run (above); default all
//   BENCH_NAR_MIB=64               size of each big NAR (random bytes, so its .nar.xz is as large)
//   BENCH_WRK_SECONDS=4            duration of each measured wrk run (3 rounds per peer, after a
//                                  2 s warm-up run)
//   BENCH_CLOSURE_PATHS=300        small paths in the closure
//   BENCH_UPSTREAM_LATENCY_MS      added to every upstream request; default 20 in cold-closure, else 0
//   BENCH_UPSTREAM_MBPS=100        per-response rate of upstream NAR bodies in MB/s (10^6 B); 0: none
//   BENCH_NODE_ARGS                extra node options for narwhal ("--cpu-prof --cpu-prof-dir=/tmp/p")
//   BENCH_NARWHAL_ARGS             extra narwhal flags ("--cache-sign-narinfo false")
//   BENCH_PREFETCH_VARIANTS=0      cold-closure: no copies through narwhal with prefetch turned off
//   BENCH_KEEP=1                   keep the temporary directory (narwhal's log and data, nginx's)
//   BENCH_CACHE_DIR                where the built closure is cached (default <repo>/.bench-tmp)
//   NARWHAL_DIST                   directory with main.js (default <repo>/dist)
// Needs nginx (Debian nginx-light), wrk, curl and nix: `apt-get install nginx-light wrk curl nix-bin`.
// Exit codes: 0 all measured, 1 a measure failed (the table says which), 2 missing tool or setting.

import { fork, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  createReadStream,
  existsSync,
  openSync,
  closeSync,
  readFileSync,
  readdirSync,
  rmSync,
} from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { Agent, createServer, request } from 'node:http';
import { createRequire } from 'node:module';
import { cpus, loadavg, tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { pipeline, Transform } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const SELF = fileURLToPath(import.meta.url);
const HERE = dirname(SELF);
const ROOT = resolve(HERE, '..');
const UPSTREAM_ROLE = '--upstream-child';
const MiB = 1024 * 1024;
const now = () => process.hrtime.bigint();
const msSince = (t0) => Number(now() - t0) / 1e6;

// =============================================================================================
// The upstream cache (runs in its own process, so that the clients' hashing does not pace it)

async function upstreamChild() {
  const dir = process.env.BENCH_UPSTREAM_DIR;
  const rate = Number(process.env.BENCH_UPSTREAM_RATE); // bytes/s per NAR response; 0: unthrottled
  const latency = Number(process.env.BENCH_UPSTREAM_LATENCY_MS);
  const small = new Map(); // URL path → { body, type }
  const nars = new Map(); // URL path → { file, size }
  const typeOf = (name) =>
    name === 'nix-cache-info'
      ? 'text/x-nix-cache-info'
      : name.endsWith('.narinfo')
        ? 'text/x-nix-narinfo'
        : 'application/json';
  for (const name of await readdir(dir)) {
    if (name === 'nix-cache-info' || name.endsWith('.narinfo') || name.endsWith('.ls')) {
      small.set(`/${name}`, { body: await readFile(join(dir, name)), type: typeOf(name) });
    }
  }
  for (const name of await readdir(join(dir, 'nar'))) {
    const file = join(dir, 'nar', name);
    nars.set(`/nar/${name}`, { file, size: (await stat(file)).size });
  }
  // Read every NAR once, so that no peer pays for the first read from disk.
  for (const { file } of nars.values()) {
    for await (const chunk of createReadStream(file, { highWaterMark: MiB })) void chunk;
  }
  const counts = new Map(); // URL path → { get, head }
  const answer = (req, res, path) => {
    const head = req.method === 'HEAD';
    const doc = small.get(path);
    if (doc) {
      res.writeHead(200, { 'content-type': doc.type, 'content-length': doc.body.length });
      res.end(head ? undefined : doc.body);
      return;
    }
    const nar = nars.get(path);
    if (!nar) {
      res.writeHead(404, { 'content-type': 'text/plain', 'content-length': 0 }).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/x-nix-nar', 'content-length': nar.size });
    if (head) {
      res.end();
      return;
    }
    const source = createReadStream(nar.file, { highWaterMark: 256 * 1024 });
    const done = () => {}; // a client that goes away just ends the stream
    if (rate > 0) pipeline(source, throttle(rate), res, done);
    else pipeline(source, res, done);
  };
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/-/counts') {
      const body = JSON.stringify(Object.fromEntries(counts));
      res.writeHead(200, { 'content-type': 'application/json' }).end(body);
      return;
    }
    let c = counts.get(path);
    if (!c) counts.set(path, (c = { get: 0, head: 0 }));
    if (req.method === 'HEAD') c.head++;
    else c.get++;
    if (latency > 0) setTimeout(() => answer(req, res, path), latency);
    else answer(req, res, path);
  });
  server.keepAliveTimeout = 30_000;
  server.listen(0, '127.0.0.1', () => process.send({ port: server.address().port }));
  process.on('disconnect', () => process.exit(0));
}

/** Passes chunks on at `rate` bytes/s on average (paced by the bytes sent since the first one). */
function throttle(rate) {
  let start = 0;
  let sent = 0;
  return new Transform({
    transform(chunk, _enc, cb) {
      if (start === 0) start = performance.now();
      this.push(chunk);
      sent += chunk.length;
      const wait = start + (sent / rate) * 1000 - performance.now();
      if (wait >= 1) setTimeout(cb, wait);
      else cb();
    },
  });
}

// =============================================================================================
// Settings

function fail(message) {
  console.error(`bench: ${message}`);
  process.exit(2);
}

function intEnv(name, def, min, max) {
  const v = process.env[name];
  if (v === undefined || v === '') return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max)
    fail(`${name} must be an integer in ${min}..${max}`);
  return n;
}

const MODES = ['all', 'hot', 'cold-herd', 'closure', 'cold-closure', 'cold-requests'];

function readSettings() {
  const mode = process.env.BENCH_MODE || 'all';
  if (!MODES.includes(mode)) fail(`BENCH_MODE must be one of ${MODES.join(', ')}`);
  const splitArgs = (name) => (process.env[name] ?? '').split(/\s+/).filter(Boolean);
  return {
    mode,
    narMib: intEnv('BENCH_NAR_MIB', 64, 1, 2048),
    wrkSeconds: intEnv('BENCH_WRK_SECONDS', 4, 1, 600),
    closurePaths: intEnv('BENCH_CLOSURE_PATHS', 300, 1, 5000),
    latencyMs: intEnv('BENCH_UPSTREAM_LATENCY_MS', mode === 'cold-closure' ? 20 : 0, 0, 10_000),
    mbps: intEnv('BENCH_UPSTREAM_MBPS', 100, 0, 100_000),
    nodeArgs: splitArgs('BENCH_NODE_ARGS'),
    narwhalArgs: splitArgs('BENCH_NARWHAL_ARGS'),
    keep: process.env.BENCH_KEEP === '1',
    cacheDir: resolve(process.env.BENCH_CACHE_DIR || join(ROOT, '.bench-tmp')),
    dist: resolve(process.env.NARWHAL_DIST || join(ROOT, 'dist')),
    run: {
      closureCold: ['all', 'closure', 'cold-closure'].includes(mode),
      closureWarm: ['all', 'closure'].includes(mode),
      prefetchVariants: mode === 'cold-closure' && process.env.BENCH_PREFETCH_VARIANTS !== '0',
      hot: ['all', 'hot'].includes(mode),
      herd: ['all', 'cold-herd'].includes(mode),
      coldRequests: mode === 'cold-requests',
    },
  };
}

const HOT_URLS = 100;
const LATENCY_REQUESTS = 2000;
/** Rounds of every interleaved hot measure (see wrkRounds). */
const HOT_ROUNDS = 3;
/** The bare node:http reference server's name in wrkRounds. */
const BARE = 'bare node:http';
const SEQUENTIAL_DOWNLOADS = 20;
const PARALLEL_DOWNLOADS = 16;
const HERD_CLIENTS = 24;
/**
 * Rounds of the cold herd and of the one cold client, each round with a NAR of its own (a cold
 * NAR is cold once), the peers taking turns (see roundOrder); the median round is reported.
 */
const COLD_ROUNDS = 3;
const WARM_COPIES = 5;
const WRK_THREADS = 2;
const WRK_CONNECTIONS = 64;
const REQUEST_TIMEOUT_MS = 300_000;
const KEY_NAME = 'bench-upstream-1';

/** Finds an executable: an absolute candidate that exists, or a name on PATH. */
function findTool(...candidates) {
  for (const c of candidates) {
    if (c.startsWith('/')) {
      if (existsSync(c)) return c;
      continue;
    }
    for (const d of (process.env.PATH ?? '').split(delimiter)) {
      if (d && existsSync(join(d, c))) return join(d, c);
    }
  }
  return null;
}

// =============================================================================================
// Progress, children, cleanup

const started = now();
const log = (msg) => console.error(`[compare ${(msSince(started) / 1000).toFixed(1)}s] ${msg}`);

/** Every child still running, so that any exit path can end it (a group for nginx and narwhal). */
const children = new Set();
let workDir = null;
let keepWork = false;
let fixtureTmp = null; // a closure being built: removed if the run ends before it is complete

function track(child, group) {
  const entry = { child, group };
  children.add(entry);
  child.once('exit', () => children.delete(entry));
  return child;
}

function killChild({ child, group }, signal) {
  try {
    if (group) process.kill(-child.pid, signal);
    else child.kill(signal);
  } catch {
    // already gone
  }
}

process.on('exit', () => {
  for (const entry of children) killChild(entry, 'SIGKILL');
  if (workDir && !keepWork) removeTreeSync(workDir);
  if (fixtureTmp) rmSync(fixtureTmp, { recursive: true, force: true });
});

/** Nix makes store paths read-only; as non-root they need write permission back to be removed. */
function removeTreeSync(dir) {
  if (process.getuid?.() !== 0) spawnSync('chmod', ['-R', 'u+w', dir], { stdio: 'ignore' });
  rmSync(dir, { recursive: true, force: true });
}

/** Runs a command to completion (bounded by `timeoutMs`), capturing its output. */
function runProc(cmd, args, { env, cwd, timeoutMs = 120_000 } = {}) {
  return new Promise((resolveRun, reject) => {
    const t0 = now();
    const child = track(spawn(cmd, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] }), false);
    const out = [];
    const err = [];
    child.stdout.on('data', (c) => out.push(c));
    child.stderr.on('data', (c) => err.push(c));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const result = {
        code,
        signal,
        ms: msSince(t0),
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      };
      if (timedOut) reject(new Error(`${cmd} ${args.join(' ')} timed out after ${timeoutMs} ms`));
      else resolveRun(result);
    });
  });
}

async function runOk(cmd, args, opts) {
  const r = await runProc(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(
      `${cmd} ${args.join(' ')} exited with ${r.code ?? r.signal}\n${tail(r.stderr)}${tail(r.stdout)}`,
    );
  }
  return r;
}

const tail = (text, n = 3000) => (text.length > n ? `…${text.slice(-n)}` : text);

function readTail(file, n = 4000) {
  try {
    return tail(readFileSync(file, 'utf8'), n);
  } catch {
    return '';
  }
}

// =============================================================================================
// HTTP client

/** GET (or HEAD); hashes or keeps the body if asked, never more; bounded by `timeoutMs`. */
function get(url, { agent, method = 'GET', hash = false, text = false, onFirstByte } = {}) {
  return new Promise((resolveGet, reject) => {
    let settled = false;
    const settle = (fn, v) => {
      if (settled) return;
      settled = true;
      clearTimeout(deadline);
      fn(v);
    };
    const req = request(url, { method, agent }, (res) => {
      const h = hash ? createHash('sha256') : null;
      const chunks = text ? [] : null;
      let bytes = 0;
      let first = true;
      res.on('data', (c) => {
        if (first) {
          first = false;
          onFirstByte?.();
        }
        bytes += c.length;
        h?.update(c);
        chunks?.push(c);
      });
      res.on('error', (e) => settle(reject, e));
      res.on('end', () =>
        settle(resolveGet, {
          status: res.statusCode,
          headers: res.headers,
          bytes,
          complete: res.complete,
          digest: h?.digest(),
          text: chunks ? Buffer.concat(chunks).toString('utf8') : undefined,
        }),
      );
      res.on('close', () => settle(reject, new Error(`response closed early: ${url}`)));
    });
    const deadline = setTimeout(
      () => req.destroy(new Error(`no complete answer within ${REQUEST_TIMEOUT_MS} ms: ${url}`)),
      REQUEST_TIMEOUT_MS,
    );
    req.on('error', (e) => settle(reject, e));
    req.end();
  });
}

async function getOk(url, opts) {
  const r = await get(url, opts);
  if (r.status !== 200) throw new Error(`GET ${url} answered ${r.status}`);
  return r;
}

async function freePort() {
  const s = createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

/** Polls `probe` every 100 ms until it returns true; throws after `timeoutMs`. */
async function waitFor(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await probe().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs / 1000} s`);
    await sleep(100);
  }
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

// =============================================================================================
// The closure, built once with the real Nix client and cached by its expression

const NIX_CONFIG = [
  'experimental-features = nix-command',
  'sandbox = false',
  'build-users-group =',
  'substituters =',
].join('\n');

const nixEnv = (cacheHome) => ({ ...process.env, NIX_CONFIG, XDG_CACHE_HOME: cacheHome });

function closureExpression(paths, narMib) {
  const bytes = narMib * MiB;
  // Builders run without a sandbox and set PATH themselves (see /work/shared/PROTOCOL.md).
  return `# bench/compare.mjs: the closure and the big NARs (random bytes: their .nar.xz is as large)
let
  mk = name: script: builtins.derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "export PATH=/bin:/usr/bin; \${script}" ];
  };
  big = name: mk name "head -c ${bytes} /dev/urandom > $out";
  small = builtins.genList
    (i: mk "narwhal-bench-p\${toString i}" "echo narwhal-bench-\${toString i} > $out") ${paths};
  blob = big "narwhal-bench-blob-${narMib}m";
in {
  inherit blob;
  top = mk "narwhal-bench-top-${paths}" "mkdir $out; echo \${blob} \${toString small} > $out/refs";
  herd = builtins.genList (i: big "narwhal-bench-herd-${narMib}m-\${toString i}") ${COLD_ROUNDS};
  single = builtins.genList (i: big "narwhal-bench-single-${narMib}m-\${toString i}") ${COLD_ROUNDS};
}
`;
}

function parseNarInfo(text) {
  const f = new Map();
  for (const line of text.split('\n')) {
    const i = line.indexOf(': ');
    if (i > 0) f.set(line.slice(0, i), line.slice(i + 2));
  }
  return f;
}

async function readPathInfo(upstreamDir, storePath) {
  const base = storePath.slice(storePath.lastIndexOf('/') + 1);
  const hashPart = base.slice(0, 32);
  const f = parseNarInfo(await readFile(join(upstreamDir, `${hashPart}.narinfo`), 'utf8'));
  const info = {
    storePath,
    name: base.slice(33),
    hashPart,
    url: f.get('URL'),
    fileSize: Number(f.get('FileSize')),
    fileHash: (f.get('FileHash') ?? '').replace(/^sha256:/, ''),
    narSize: Number(f.get('NarSize')),
    references: (f.get('References') ?? '').split(' ').filter(Boolean),
  };
  if (!info.url || !info.fileHash || !(info.fileSize > 0)) {
    throw new Error(`incomplete narinfo for ${storePath} in ${upstreamDir}`);
  }
  return info;
}

async function fixtureIsComplete(dir, manifest) {
  const all = [
    manifest.top,
    manifest.blob,
    ...manifest.herd,
    ...manifest.single,
    ...manifest.small,
  ];
  for (const p of all) {
    const s = await stat(join(dir, 'upstream', p.url)).catch(() => null);
    if (!s || s.size !== p.fileSize) return false;
    if (!existsSync(join(dir, 'upstream', `${p.hashPart}.narinfo`))) return false;
  }
  return true;
}

async function prepareFixture(settings, nixVersion) {
  const expr = closureExpression(settings.closurePaths, settings.narMib);
  const key = createHash('sha256').update(`${nixVersion}\n${expr}`).digest('hex').slice(0, 16);
  const dir = join(settings.cacheDir, `compare-${key}`);
  const manifestFile = join(dir, 'manifest.json');
  if (existsSync(manifestFile)) {
    const manifest = JSON.parse(await readFile(manifestFile, 'utf8'));
    if (await fixtureIsComplete(dir, manifest)) {
      log(`reusing the closure in ${dir}`);
      return { dir, upstreamDir: join(dir, 'upstream'), ...manifest };
    }
    log(`${dir} is incomplete; building it again`);
    await rm(dir, { recursive: true, force: true });
  }

  await removeAbandonedBuilds(settings.cacheDir);
  const tmp = `${dir}.tmp-${process.pid}`;
  fixtureTmp = tmp;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  try {
    const env = nixEnv(join(tmp, 'xdg'));
    const nixFile = join(tmp, 'closure.nix');
    await writeFile(nixFile, expr);
    log(
      `building the closure (${settings.closurePaths} small paths + ${settings.narMib} MiB, ` +
        `and ${2 * COLD_ROUNDS} more ${settings.narMib} MiB paths) with nix-build; once per expression`,
    );
    const attrs = ['top', 'blob', 'herd', 'single'];
    const built = await runOk(
      'nix-build',
      [nixFile, '--no-out-link', '--max-jobs', '2', ...attrs.flatMap((a) => ['-A', a])],
      { env, timeoutMs: 30 * 60_000 },
    );
    const outs = built.stdout.split('\n').filter((l) => l.startsWith('/'));
    const find = (suffix) => {
      const p = outs.find((o) => o.endsWith(suffix));
      if (!p) throw new Error(`nix-build printed no path ending in ${suffix}:\n${built.stdout}`);
      return p;
    };
    const rounds = Array.from({ length: COLD_ROUNDS }, (_, i) => i);
    const paths = {
      top: find(`-narwhal-bench-top-${settings.closurePaths}`),
      blob: find(`-narwhal-bench-blob-${settings.narMib}m`),
      herd: rounds.map((i) => find(`-narwhal-bench-herd-${settings.narMib}m-${i}`)),
      single: rounds.map((i) => find(`-narwhal-bench-single-${settings.narMib}m-${i}`)),
    };
    const sk = join(tmp, 'upstream.sk');
    const pk = join(tmp, 'upstream.pk');
    await runOk('nix-store', ['--generate-binary-cache-key', KEY_NAME, sk, pk], { env });
    const upstreamDir = join(tmp, 'upstream');
    log('signing and publishing it as an xz file:// cache (real xz: this takes a while once)');
    // The cache's secret-key parameter signs every narinfo it writes with the upstream's key,
    // without touching the signatures kept in the local store.
    const to =
      `file://${upstreamDir}?compression=xz&parallel-compression=true&compression-level=1` +
      `&secret-key=${sk}`;
    await runOk('nix', ['copy', '--to', to, paths.top, ...paths.herd, ...paths.single], {
      env,
      timeoutMs: 60 * 60_000,
    });
    const top = await readPathInfo(upstreamDir, paths.top);
    const blob = await readPathInfo(upstreamDir, paths.blob);
    const herd = await Promise.all(paths.herd.map((p) => readPathInfo(upstreamDir, p)));
    const single = await Promise.all(paths.single.map((p) => readPathInfo(upstreamDir, p)));
    const small = [];
    for (const ref of top.references) {
      const m = /^[0-9a-z]{32}-narwhal-bench-p(\d+)$/.exec(ref);
      if (m) small[Number(m[1])] = await readPathInfo(upstreamDir, `/nix/store/${ref}`);
    }
    if (small.length !== settings.closurePaths || small.some((p) => !p)) {
      throw new Error(`the top path references ${small.length} small paths, not all of them`);
    }
    const manifest = {
      publicKey: (await readFile(pk, 'utf8')).trim(),
      top,
      blob,
      herd,
      single,
      small,
    };
    await writeFile(join(tmp, 'manifest.json'), JSON.stringify(manifest));
    await rm(join(tmp, 'xdg'), { recursive: true, force: true });
    await rename(tmp, dir).catch(async (e) => {
      // Another run finished the same fixture first: use theirs.
      if (!existsSync(manifestFile)) throw e;
      await rm(tmp, { recursive: true, force: true });
    });
    fixtureTmp = null;
    const used = JSON.parse(await readFile(manifestFile, 'utf8'));
    return { dir, upstreamDir: join(dir, 'upstream'), ...used };
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    fixtureTmp = null;
    throw e;
  }
}

/** Removes half-built closures left by runs that were killed (their process is gone). */
async function removeAbandonedBuilds(cacheDir) {
  for (const name of await readdir(cacheDir).catch(() => [])) {
    const m = /^compare-[0-9a-f]+\.tmp-(\d+)$/.exec(name);
    if (!m || isAlive(Number(m[1]))) continue;
    log(`removing ${name}, left by a run that ended while building`);
    await rm(join(cacheDir, name), { recursive: true, force: true });
  }
}

function isAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === 'EPERM';
  }
}

// =============================================================================================
// The three servers

async function startUpstream(fixture, settings) {
  const child = track(
    fork(SELF, [UPSTREAM_ROLE], {
      execArgv: [],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      env: {
        ...process.env,
        BENCH_UPSTREAM_DIR: fixture.upstreamDir,
        BENCH_UPSTREAM_RATE: String(settings.mbps * 1e6),
        BENCH_UPSTREAM_LATENCY_MS: String(settings.latencyMs),
      },
    }),
    false,
  );
  const port = await new Promise((resolvePort, reject) => {
    const timer = setTimeout(() => reject(new Error('upstream not listening within 60 s')), 60_000);
    child.once('message', (m) => {
      clearTimeout(timer);
      resolvePort(m.port);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`upstream exited with ${code}`));
    });
  });
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    pid: child.pid,
    /** Requests per URL path so far: { path: { get, head } }. */
    counts: async () => JSON.parse((await getOk(`${url}/-/counts`, { text: true })).text),
    stop: () => stopChild(child, false, 'SIGTERM', 5_000),
  };
}

/** Sends `signal`, waits up to `graceMs` for the exit, then SIGKILLs (the group if `group`). */
async function stopChild(child, group, signal, graceMs) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  killChild({ child, group }, signal);
  const timer = setTimeout(() => killChild({ child, group }, 'SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
  // nginx workers and narwhal's children share the group: make sure none outlives its parent.
  if (group) killChild({ child, group }, 'SIGKILL');
}

function nginxConfig(dir, port, upstreamUrl) {
  // The NixOS-wiki recipe (a caching proxy in front of a binary cache), with every path of its own.
  return `# bench/compare.mjs: the nginx proxy_cache recipe
${process.getuid?.() === 0 ? 'user root;\n' : ''}worker_processes auto;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events {
  worker_connections 4096;
}
http {
  access_log off;
  sendfile on;
  client_body_temp_path ${dir}/tmp/client_body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  proxy_cache_path ${dir}/cache levels=1:2 keys_zone=nix:100m max_size=20g inactive=365d use_temp_path=off;
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass ${upstreamUrl};
      proxy_cache nix;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 1h;
      proxy_cache_valid 200 302 60d;
      proxy_cache_valid 404 1m;
    }
  }
}
`;
}

async function startNginx(nginx, work, upstream) {
  const dir = join(work, 'nginx');
  await mkdir(join(dir, 'tmp'), { recursive: true });
  await mkdir(join(dir, 'cache'), { recursive: true });
  const port = await freePort();
  const conf = join(dir, 'nginx.conf');
  await writeFile(conf, nginxConfig(dir, port, upstream.url));
  const errorLog = join(dir, 'error.log');
  const out = openSync(join(dir, 'stderr.log'), 'a');
  const child = track(
    spawn(nginx, ['-p', `${dir}/`, '-c', conf, '-e', errorLog, '-g', 'daemon off;'], {
      stdio: ['ignore', out, out],
      detached: true,
    }),
    true,
  );
  closeSync(out);
  const base = `http://127.0.0.1:${port}`;
  const output = () => `${readTail(join(dir, 'stderr.log'))}${readTail(errorLog)}`;
  await waitFor('nginx answering /nix-cache-info', 30_000, async () => {
    if (child.exitCode !== null) throw new Error(`nginx exited:\n${output()}`);
    return (await get(`${base}/nix-cache-info`, { agent: false })).status === 200;
  }).catch((e) => {
    throw new Error(`${e.message}\n${output()}`);
  });
  return {
    name: 'nginx',
    base,
    pid: child.pid,
    output,
    alive: () => child.exitCode === null && child.signalCode === null,
    /** Sum of the peak RSS of the master and every child (workers, cache manager). */
    peakRss: () => [child.pid, ...childPids(child.pid)].reduce((s, p) => s + procHwm(p), 0),
    /** CPU seconds used so far by the master and its workers. */
    cpuSeconds: () =>
      [child.pid, ...childPids(child.pid)].reduce((s, p) => s + procCpuSeconds(p), 0),
    stop: () => stopChild(child, true, 'SIGTERM', 10_000),
  };
}

async function startNarwhal(settings, work, upstream, publicKey, launch) {
  const main = join(settings.dist, 'main.js');
  const dataPath = join(work, 'narwhal-data');
  await mkdir(dataPath, { recursive: true });
  const port = await freePort();
  const logFile = join(work, 'narwhal.log');
  const out = openSync(logFile, 'a');
  // narwhal on its defaults: settings the calling shell may have exported are left out.
  const env = Object.fromEntries(
    Object.entries(process.env).filter(
      ([k]) => !/^(CACHE_|SERVER_|LOG_|PROMETHEUS_|NARWHAL_|SHUTDOWN_|NETRC)/.test(k),
    ),
  );
  const args = [
    ...launch.flags,
    ...settings.nodeArgs,
    main,
    'serve',
    '--prometheus-enabled',
    'true',
    ...settings.narwhalArgs,
  ];
  const child = track(
    spawn(process.execPath, args, {
      cwd: work,
      stdio: ['ignore', out, out],
      detached: true,
      env: {
        // npm start's environment, unless the calling shell sets those variables (an A/B run).
        ...launch.env,
        ...env,
        SERVER_ADDR: `127.0.0.1:${port}`,
        CACHE_DATA_PATH: dataPath,
        CACHE_UPSTREAM_URL: upstream.url,
        CACHE_UPSTREAM_PUBLIC_KEY: publicKey,
        CACHE_HOSTNAME: 'narwhal-bench',
      },
    }),
    true,
  );
  closeSync(out);
  const base = `http://127.0.0.1:${port}`;
  const output = () => readTail(logFile);
  await waitFor('narwhal healthy', 60_000, async () => {
    if (child.exitCode !== null) throw new Error(`narwhal exited:\n${output()}`);
    return (await get(`${base}/healthz`, { agent: false })).status === 200;
  }).catch((e) => {
    throw new Error(`${e.message}\n${output()}`);
  });
  return {
    name: 'narwhal',
    base,
    pid: child.pid,
    output,
    alive: () => child.exitCode === null && child.signalCode === null,
    peakRss: () => procHwm(child.pid),
    cpuSeconds: () => procCpuSeconds(child.pid),
    mainThreadCpuSeconds: () => mainThreadCpuSeconds(child.pid),
    // Its shutdown lets responses in flight finish (up to --shutdown-timeout, 30 s by default).
    stop: () => stopChild(child, true, 'SIGTERM', 40_000),
  };
}

/** VmHWM (peak resident set) of a process, in bytes; 0 if it is gone. */
function procHwm(pid) {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    return Number(/^VmHWM:\s+(\d+) kB/m.exec(text)?.[1] ?? 0) * 1024;
  } catch {
    return 0;
  }
}

/** CPU time (user + system, all threads) a process has used so far, in seconds; 0 if it is gone. */
function procCpuSeconds(pid) {
  return statCpuSeconds(`/proc/${pid}/stat`);
}

/** CPU time of a process's main thread alone (narwhal's event loop), in seconds; 0 if gone. */
function mainThreadCpuSeconds(pid) {
  return statCpuSeconds(`/proc/${pid}/task/${pid}/stat`);
}

function statCpuSeconds(path) {
  try {
    const stat = readFileSync(path, 'utf8');
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return 0;
  }
}
const CLOCK_TICKS = 100;

function childPids(parent) {
  const found = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const text = readFileSync(`/proc/${name}/status`, 'utf8');
      if (Number(/^PPid:\s+(\d+)/m.exec(text)?.[1]) === parent) found.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

// =============================================================================================
// Results

const results = new Map(); // measure id → { direct, nginx, narwhal } (numbers or 'error')
const errors = [];
const notes = [];

function record(id, column, value) {
  if (!results.has(id)) results.set(id, {});
  results.get(id)[column] = value;
}

/** Runs one measure; a failure is recorded (the table shows "error") and the run goes on. */
async function attempt(what, ids, column, fn) {
  try {
    await fn();
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    log(`FAILED: ${what} (${column}): ${message.split('\n')[0]}`);
    errors.push(`${what} (${column}): ${message}`);
    for (const id of ids) if (results.get(id)?.[column] === undefined) record(id, column, 'error');
  }
}

// =============================================================================================
// Measures

/** The peer's own URL for the NAR of `info` (narwhal serves NARs under names of its own). */
async function narUrlVia(peer, info) {
  const r = await getOk(`${peer.base}/${info.hashPart}.narinfo`, { agent: false, text: true });
  const url = parseNarInfo(r.text).get('URL');
  if (!url) throw new Error(`${peer.name}: narinfo of ${info.name} has no URL`);
  return new URL(url, `${peer.base}/`).href;
}

/** GETs a NAR until the peer serves it from its own storage (narwhal says so in a header). */
async function warmNar(peer, url, size) {
  await waitFor(`${peer.name} serving ${url} from storage`, 120_000, async () => {
    const r = await getOk(url, { agent: false });
    if (r.bytes !== size) throw new Error(`${url}: ${r.bytes} bytes, expected ${size}`);
    const source = r.headers['x-narwhal-source'];
    return source === undefined || source === 'storage';
  });
}

/** Upstream requests between two counts, leaving out narwhal's /nix-cache-info probes. */
function upstreamTotal(before, after) {
  let n = 0;
  for (const [path, c] of Object.entries(after)) {
    if (path === '/nix-cache-info') continue;
    const b = before[path] ?? { get: 0, head: 0 };
    n += c.get - b.get + (c.head - b.head);
  }
  return n;
}

async function runWrk(url, seconds, script) {
  const args = [
    `-t${WRK_THREADS}`,
    `-c${WRK_CONNECTIONS}`,
    `-d${seconds}s`,
    '--timeout',
    '10s',
    ...(script ? ['-s', script] : []),
    url,
  ];
  const r = await runOk('wrk', args, { timeoutMs: (seconds + 60) * 1000 });
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(r.stdout)?.[1]);
  const requests = Number(/(\d+) requests in/.exec(r.stdout)?.[1]);
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(r.stdout)?.[1] ?? 0);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(
    r.stdout,
  );
  const socketErrors = sock ? sock.slice(1).reduce((s, v) => s + Number(v), 0) : 0;
  if (!Number.isFinite(rps)) throw new Error(`unexpected wrk output:\n${r.stdout}`);
  if (non2xx > 0) throw new Error(`${non2xx} of ${requests} answers were not 2xx (wrk ${url})`);
  return { rps, requests, socketErrors };
}

/**
 * One measured wrk run: requests per second, and the server's CPU time per request (user + system
 * over all of its threads and processes): what a request costs, apart from how much of the cores
 * it gets.
 */
async function wrkOnce(peer, label, url, seconds, script) {
  const cpu0 = peer.cpuSeconds();
  const w = await runWrk(url, seconds, script);
  const cpuUs = ((peer.cpuSeconds() - cpu0) / w.requests) * 1e6;
  if (w.socketErrors > 0) {
    notes.push(`${label} via ${peer.name}: wrk counted ${w.socketErrors} socket errors`);
  }
  log(
    `  ${label} via ${peer.name}: ${Math.round(w.rps)} req/s (${w.requests} requests), ` +
      `${cpuUs.toFixed(1)} µs CPU each, ${((cpuUs * w.rps) / 1e6).toFixed(2)} cores busy`,
  );
  return { rps: w.rps, cpuUs };
}

/** The middle value (the mean of the two middle ones for an even count). */
function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * The peers' order in round `round` of an interleaved measure: as given, then reversed, and so
 * on (nginx, narwhal, narwhal, nginx, nginx, narwhal): neither always goes first.
 */
function roundOrder(items, round) {
  return round % 2 === 0 ? items : [...items].reverse();
}

/**
 * wrk over every target (`{ peer, url, script }`) in HOT_ROUNDS rounds that alternate them, each
 * run `seconds` long, after a 2 s warm-up run each (JIT, connections, page cache). This host's
 * speed drifts by a factor of two within minutes (other tenants); peers measured one after the
 * other each get a different machine, peers measured in alternation share it. Per target that
 * ran: the median round's rate and CPU time per request. A target that fails is dropped from
 * later rounds; its error is in `failed`.
 */
async function wrkRounds(label, targets, seconds) {
  const samples = new Map(targets.map((t) => [t.peer.name, []]));
  const failed = new Map();
  const run = async (t, fn) => {
    if (failed.has(t.peer.name)) return;
    try {
      await fn();
    } catch (e) {
      failed.set(t.peer.name, e);
    }
  };
  for (const t of targets) await run(t, () => runWrk(t.url, Math.min(2, seconds), t.script));
  for (let round = 0; round < HOT_ROUNDS; round++) {
    for (const t of roundOrder(targets, round)) {
      await run(t, async () =>
        samples.get(t.peer.name).push(await wrkOnce(t.peer, label, t.url, seconds, t.script)),
      );
    }
  }
  const medians = new Map();
  for (const [name, xs] of samples) {
    if (xs.length === HOT_ROUNDS) {
      medians.set(name, {
        rps: median(xs.map((x) => x.rps)),
        cpuUs: median(xs.map((x) => x.cpuUs)),
      });
    }
  }
  return { medians, failed };
}

/** Records the result of wrkRounds for `peer` under `[rpsId, cpuId]`, or its failure. */
async function recordRounds(what, ids, peerName, rounds, column = peerName) {
  await attempt(what, ids, column, async () => {
    const failure = rounds.failed.get(peerName);
    if (failure) throw failure;
    const m = rounds.medians.get(peerName);
    if (!m) throw new Error(`${what}: no complete set of rounds`);
    record(ids[0], column, m.rps);
    record(ids[1], column, m.cpuUs);
  });
}

/**
 * Node's own ceiling on this machine: a bare node:http server (one thread, no framework) answering
 * every request with narwhal's bytes of a hot narinfo, measured in the same rounds as the peers'
 * hot narinfos. It shows how much of the gap to nginx is narwhal's and how much is Node's HTTP
 * server on one core. Resolves the server as a target (the caller stops it), or null.
 */
async function startBareNode(narwhal, fixture) {
  const { text } = await getOk(`${narwhal.base}/${fixture.small[0].hashPart}.narinfo`, {
    text: true,
  });
  const body = Buffer.from(text, 'utf8');
  const code =
    "const body = Buffer.from(process.env.BODY, 'base64');" +
    "require('node:http').createServer((q, r) => {" +
    "r.writeHead(200, { 'content-type': 'text/x-nix-narinfo', 'content-length': body.length });" +
    'r.end(body); }).listen(0, "127.0.0.1", function () { console.log(this.address().port); });';
  const child = track(
    spawn(process.execPath, ['-e', code], {
      env: { ...process.env, BODY: body.toString('base64') },
      stdio: ['ignore', 'pipe', 'inherit'],
    }),
    false,
  );
  const port = await new Promise((resolve, reject) => {
    child.stdout.once('data', (d) => resolve(Number(String(d).trim())));
    child.once('exit', (c) => reject(new Error(`bare node:http server exited with ${c}`)));
  });
  return {
    peer: { name: BARE, cpuSeconds: () => procCpuSeconds(child.pid) },
    url: `http://127.0.0.1:${port}/x`,
    stop: () => child.kill(),
  };
}

/**
 * The hot measures of every peer. Rates (wrk) and one connection's latency are measured in rounds
 * that alternate the peers (see wrkRounds); the big NAR downloads peer by peer.
 */
async function hotMeasures(peers, fixture, settings, upstream, work) {
  const hot = fixture.small.slice(0, HOT_URLS);
  const small = fixture.small[0];
  const big = fixture.blob;
  const ids = {
    narinfo: ['narinfoRps', 'narinfoCpu'],
    latency: ['narinfoP50', 'narinfoP99'],
    small: ['smallNarRps', 'smallNarCpu'],
    big: ['bigSeqSeconds', 'bigSeqRate', 'bigParSeconds', 'bigParRate'],
  };
  const script = join(work, 'narinfos.lua');
  const list = hot.map((p) => `"/${p.hashPart}.narinfo"`).join(',\n  ');
  await writeFile(
    script,
    `local paths = {\n  ${list}\n}\nlocal i = 0\n` +
      'request = function()\n  i = i % #paths + 1\n  return wrk.format(nil, paths[i])\nend\n',
  );
  const ready = [];
  for (const peer of peers) {
    log(`hot warm-up through ${peer.name}`);
    await attempt(
      'hot warm-up',
      [...Object.values(ids).flat(), 'hotUpstream'],
      peer.name,
      async () => {
        const narinfoUrls = hot.map((p) => `${peer.base}/${p.hashPart}.narinfo`);
        const agent = new Agent({ keepAlive: true, maxSockets: 8 });
        for (const url of narinfoUrls) await getOk(url, { agent });
        agent.destroy();
        const smallUrl = await narUrlVia(peer, small);
        await warmNar(peer, smallUrl, small.fileSize);
        const bigUrl = await narUrlVia(peer, big);
        await warmNar(peer, bigUrl, big.fileSize);
        ready.push({ peer, narinfoUrls, smallUrl, bigUrl });
      },
    );
  }
  if (ready.length === 0) return;
  // The peers are measured together: the upstream's count is theirs together.
  const before = await upstream.counts();

  // Hot narinfos, with the bare node:http reference in the same rounds.
  log(`hot narinfo: ${HOT_ROUNDS} rounds of ${settings.wrkSeconds} s, peers alternating`);
  const narwhal = ready.find((r) => r.peer.name === 'narwhal');
  let bare = null;
  if (narwhal) {
    await attempt('bare node:http', ['bareNarinfoRps', 'bareNarinfoCpu'], 'narwhal', async () => {
      bare = await startBareNode(narwhal.peer, fixture);
    });
  }
  try {
    const targets = ready.map((r) => ({ peer: r.peer, url: r.peer.base, script }));
    if (bare) targets.push(bare);
    const rounds = await wrkRounds('hot narinfo', targets, settings.wrkSeconds);
    for (const r of ready) await recordRounds('hot narinfo', ids.narinfo, r.peer.name, rounds);
    if (bare) {
      const bareIds = ['bareNarinfoRps', 'bareNarinfoCpu'];
      await recordRounds('bare node:http', bareIds, BARE, rounds, 'narwhal');
      // Against nginx's hot narinfo figures from the same rounds.
      const nginx = rounds.medians.get('nginx');
      if (nginx) {
        record('bareNarinfoRps', 'nginx', nginx.rps);
        record('bareNarinfoCpu', 'nginx', nginx.cpuUs);
      }
    }
  } finally {
    bare?.stop();
  }

  // One keep-alive connection making sequential requests, the peers taking turns.
  const lat = new Map();
  const agents = new Map(
    ready.map((r) => [r.peer.name, new Agent({ keepAlive: true, maxSockets: 1 })]),
  );
  const latencyFailed = new Map();
  try {
    for (let round = 0; round < HOT_ROUNDS; round++) {
      for (const r of roundOrder(ready, round)) {
        const name = r.peer.name;
        if (latencyFailed.has(name)) continue;
        try {
          const agent = agents.get(name);
          const urls = r.narinfoUrls;
          if (round === 0)
            for (let i = 0; i < 200; i++) await getOk(urls[i % urls.length], { agent });
          const xs = lat.get(name) ?? [];
          lat.set(name, xs);
          const n = Math.ceil(LATENCY_REQUESTS / HOT_ROUNDS);
          for (let i = 0; i < n && xs.length < LATENCY_REQUESTS; i++) {
            const t0 = now();
            await getOk(urls[xs.length % urls.length], { agent });
            xs.push(msSince(t0));
          }
        } catch (e) {
          latencyFailed.set(name, e);
        }
      }
    }
  } finally {
    for (const a of agents.values()) a.destroy();
  }
  for (const r of ready) {
    await attempt('hot narinfo, one connection', ids.latency, r.peer.name, async () => {
      const failure = latencyFailed.get(r.peer.name);
      if (failure) throw failure;
      const xs = [...lat.get(r.peer.name)].sort((a, b) => a - b);
      const [p50, p99] = [percentile(xs, 50), percentile(xs, 99)];
      record('narinfoP50', r.peer.name, p50);
      record('narinfoP99', r.peer.name, p99);
      log(
        `  hot narinfo, one connection, via ${r.peer.name}: p50 ${p50.toFixed(3)} ms, p99 ${p99.toFixed(3)} ms`,
      );
    });
  }

  log(`hot small NAR: ${HOT_ROUNDS} rounds of ${settings.wrkSeconds} s, peers alternating`);
  const smallRounds = await wrkRounds(
    'hot small NAR',
    ready.map((r) => ({ peer: r.peer, url: r.smallUrl })),
    settings.wrkSeconds,
  );
  for (const r of ready) await recordRounds('hot small NAR', ids.small, r.peer.name, smallRounds);

  for (const r of ready) await bigNarMeasures(r.peer, r.bigUrl, big, ids.big);

  const hotUpstream = upstreamTotal(before, await upstream.counts());
  for (const r of ready) record('hotUpstream', r.peer.name, hotUpstream);
  if (hotUpstream > 0) notes.push(`hot measures: ${hotUpstream} upstream requests (all peers)`);
}

/** A hot big NAR through `peer`: sequential downloads on one connection, then parallel ones. */
async function bigNarMeasures(peer, bigUrl, big, ids) {
  await attempt('hot big NAR', ids, peer.name, async () => {
    const w = ['-s', '-w', '%{http_code} %{size_download}\\n'];
    const check = (stdout, n) => {
      const good = stdout.split('\n').filter((l) => l === `200 ${big.fileSize}`).length;
      if (good !== n) throw new Error(`curl: ${good} of ${n} downloads complete:\n${stdout}`);
    };
    // Sequential: one curl process, one connection, the downloads one after another.
    const many = Array.from({ length: SEQUENTIAL_DOWNLOADS }, () => ['-o', '/dev/null', bigUrl]);
    const seq = await runOk('curl', [...w, ...many.flat()], { timeoutMs: 600_000 });
    check(seq.stdout, SEQUENTIAL_DOWNLOADS);
    record('bigSeqSeconds', peer.name, seq.ms / 1000);
    record('bigSeqRate', peer.name, (SEQUENTIAL_DOWNLOADS * big.fileSize) / MiB / (seq.ms / 1000));
    // Parallel: one curl process per download, all started at once.
    const t0 = now();
    const par = await Promise.all(
      Array.from({ length: PARALLEL_DOWNLOADS }, () =>
        runOk('curl', [...w, '-o', '/dev/null', bigUrl], { timeoutMs: 600_000 }),
      ),
    );
    const parMs = msSince(t0);
    check(par.map((r) => r.stdout).join(''), PARALLEL_DOWNLOADS);
    record('bigParSeconds', peer.name, parMs / 1000);
    record('bigParRate', peer.name, (PARALLEL_DOWNLOADS * big.fileSize) / MiB / (parMs / 1000));
    log(
      `  hot big NAR via ${peer.name}: ${SEQUENTIAL_DOWNLOADS} sequential ${(seq.ms / 1000).toFixed(2)} s, ` +
        `${PARALLEL_DOWNLOADS} parallel ${(parMs / 1000).toFixed(2)} s`,
    );
  });
}

/**
 * One NAR download by a curl process of its own, its body hashed by sha256sum (a client process
 * apart, as every Nix client is): first byte as curl saw it, from its own start; end in ms from
 * `t0`.
 */
function curlDownload(url, t0, expectHash, encodeNix32) {
  return new Promise((resolve) => {
    const script =
      "set -o pipefail; curl -sS -w '%{stderr}\\n%{http_code} %{time_starttransfer}' " +
      `'${url}' | sha256sum`;
    const child = spawn('bash', ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (code) => {
      const done = msSince(t0);
      const [status, start] = err.trim().split('\n').pop().split(' ');
      const hex = out.trim().split(/\s+/)[0] ?? '';
      const ok =
        code === 0 && status === '200' && encodeNix32(Buffer.from(hex, 'hex')) === expectHash;
      resolve({ ttfb: Number(start) * 1000, done, ok, status: code === 0 ? status : err.trim() });
    });
  });
}

/** One NAR download with its body hashed; times in ms from `t0`. */
async function timedDownload(url, t0, expectHash, encodeNix32) {
  let ttfb = NaN;
  const r = await get(url, { agent: false, hash: true, onFirstByte: () => (ttfb = msSince(t0)) });
  const done = msSince(t0);
  const ok = r.status === 200 && r.complete && encodeNix32(r.digest) === expectHash;
  return { ttfb, done, ok, status: r.status };
}

/**
 * One cold herd: HERD_CLIENTS curl clients at once for the cold NAR `p` through `peer`, after one
 * client's narinfo. Resolves what it measured; rejects when the measure could not be made.
 */
async function coldHerdOnce(peer, p, upstream, encodeNix32) {
  log(
    `cold herd through ${peer.name}: ${HERD_CLIENTS} clients, one ${(p.fileSize / MiB).toFixed(1)} MiB .nar.xz`,
  );
  // Counted from before the narinfo: it may start the NAR's download (narwhal's NAR prefetch).
  const before = await upstream.counts();
  const url = await narUrlVia(peer, p); // a client reads the narinfo first, as Nix does
  const cpu0 = peer.cpuSeconds();
  const t0 = now();
  const runs = await Promise.all(
    Array.from({ length: HERD_CLIENTS }, () =>
      curlDownload(url, t0, p.fileHash, encodeNix32).catch((e) => ({
        ttfb: NaN,
        done: msSince(t0),
        ok: false,
        status: e.message,
      })),
    ),
  );
  const wall = msSince(t0);
  const cpu = peer.cpuSeconds() - cpu0;
  const after = await upstream.counts();
  const ttfbs = runs.map((r) => r.ttfb).filter(Number.isFinite);
  const gets = (after[`/${p.url}`]?.get ?? 0) - (before[`/${p.url}`]?.get ?? 0);
  const correct = runs.filter((r) => r.ok).length;
  log(
    `  wall ${(wall / 1000).toFixed(2)} s, ${gets} upstream GET(s), ${correct}/${HERD_CLIENTS} correct`,
  );
  if (gets !== 1) notes.push(`cold herd via ${peer.name}: ${gets} upstream GETs of the NAR`);
  if (correct !== HERD_CLIENTS) {
    const bad = runs.filter((r) => !r.ok).map((r) => r.status);
    errors.push(
      `cold herd (${peer.name}): ${HERD_CLIENTS - correct} bad bodies: ${bad.join(', ')}`,
    );
  }
  return {
    wall: wall / 1000,
    ttfbMean: ttfbs.reduce((sum, v) => sum + v, 0) / ttfbs.length,
    ttfbMax: Math.max(...ttfbs),
    gets,
    correct,
    cpu,
  };
}

/**
 * The cold herd in COLD_ROUNDS rounds, a NAR of its own each, the peers taking turns. Per peer:
 * the median round's wall time, first-byte times and CPU; the most upstream GETs and the fewest
 * correct bodies of any round (those must hold in every round).
 */
async function coldHerds(peers, fixture, upstream, encodeNix32) {
  const ids = ['herdWall', 'herdTtfbMean', 'herdTtfbMax', 'herdUpstreamGets', 'herdCorrect'];
  const rounds = new Map(peers.map((peer) => [peer.name, []]));
  for (let round = 0; round < COLD_ROUNDS; round++) {
    for (const peer of roundOrder(peers, round)) {
      await attempt('cold herd', ids, peer.name, async () => {
        rounds
          .get(peer.name)
          .push(await coldHerdOnce(peer, fixture.herd[round], upstream, encodeNix32));
      });
    }
  }
  for (const [name, xs] of rounds) {
    if (xs.length !== COLD_ROUNDS) continue; // a failed round is recorded as an error
    const mid = (key) => median(xs.map((x) => x[key]));
    record('herdWall', name, mid('wall'));
    record('herdTtfbMean', name, mid('ttfbMean'));
    record('herdTtfbMax', name, mid('ttfbMax'));
    record('herdUpstreamGets', name, Math.max(...xs.map((x) => x.gets)));
    record('herdCorrect', name, Math.min(...xs.map((x) => x.correct)));
    record('herdCpu', name, mid('cpu'));
  }
}

/**
 * One cold client of a big NAR, straight from the upstream and through each peer, in COLD_ROUNDS
 * rounds (a NAR of its own each, the three taking turns): each one's median round.
 */
async function coldSingles(peers, fixture, upstream, encodeNix32) {
  const sources = [
    { name: 'direct', url: async (p) => `${upstream.url}/${p.url}` },
    ...peers.map((peer) => ({ name: peer.name, url: (p) => narUrlVia(peer, p) })),
  ];
  const times = new Map(sources.map((src) => [src.name, []]));
  for (let round = 0; round < COLD_ROUNDS; round++) {
    const p = fixture.single[round];
    for (const src of roundOrder(sources, round)) {
      await attempt('one cold client', ['coldSingle'], src.name, async () => {
        const t0 = now();
        const r = await timedDownload(await src.url(p), t0, p.fileHash, encodeNix32);
        if (!r.ok) throw new Error(`the body did not match (status ${r.status})`);
        // Timed from the NAR request (the narinfo came before it, as for a Nix client).
        times.get(src.name).push(r.done / 1000);
        log(`one cold client via ${src.name}: ${(r.done / 1000).toFixed(2)} s`);
      });
    }
  }
  for (const [name, xs] of times) {
    if (xs.length === COLD_ROUNDS) record('coldSingle', name, median(xs));
  }
}

async function nixCopy(column, fromUrl, fixture, settings, work, kind) {
  const label = `${kind}-${column}`;
  const store = join(work, 'stores', label);
  const xdg = join(work, 'xdg', label);
  await mkdir(xdg, { recursive: true });
  const args = [
    'copy',
    '--from',
    fromUrl,
    '--store',
    store,
    '--option',
    'trusted-public-keys',
    fixture.publicKey,
    fixture.top.storePath,
  ];
  try {
    const r = await runOk('nix', args, { env: nixEnv(xdg), timeoutMs: 600_000 });
    // The copy really happened: the big path and the top path's file are in the new store.
    const blob = await stat(join(store, fixture.blob.storePath));
    if (blob.size !== settings.narMib * MiB) throw new Error(`big path has ${blob.size} bytes`);
    if (!(await stat(join(store, fixture.top.storePath, 'refs'))).isFile()) {
      throw new Error('top path missing');
    }
    return r.ms / 1000;
  } finally {
    removeTreeSync(store);
    await rm(xdg, { recursive: true, force: true });
  }
}

/**
 * narwhal with part of its closure prefetch turned off (cold-closure mode): what each part is
 * worth, and narwhal's own cold per-request cost (without prefetch) against nginx's.
 */
const PREFETCH_VARIANTS = [
  {
    id: 'closureColdNarinfoPrefetch',
    label: 'narinfo prefetch only (--cache-prefetch-nars false)',
    args: ['--cache-prefetch-nars', 'false'],
  },
  {
    id: 'closureColdNoPrefetch',
    label: 'no prefetch (--cache-prefetch-narinfos false --cache-prefetch-nars false)',
    args: ['--cache-prefetch-narinfos', 'false', '--cache-prefetch-nars', 'false'],
  },
];

async function closureMeasures(peers, fixture, settings, upstream, work, launch) {
  const n = fixture.small.length + 1;
  if (settings.run.closureCold) {
    const columns = [{ name: 'direct', base: upstream.url }, ...peers];
    for (const peer of columns) {
      await attempt(
        'cold nix copy',
        ['closureCold', 'closureColdUpstream'],
        peer.name,
        async () => {
          const before = await upstream.counts();
          const secs = await nixCopy(peer.name, peer.base, fixture, settings, work, 'cold');
          const reqs = upstreamTotal(before, await upstream.counts());
          record('closureCold', peer.name, secs);
          record('closureColdUpstream', peer.name, reqs);
          log(
            `cold nix copy of ${n} + 1 paths via ${peer.name}: ${secs.toFixed(2)} s, ${reqs} upstream requests`,
          );
        },
      );
    }
  }
  if (settings.run.prefetchVariants) {
    for (const v of PREFETCH_VARIANTS) {
      await attempt('cold nix copy', [v.id, `${v.id}Upstream`], 'narwhal', async () => {
        const dir = join(work, v.id);
        await mkdir(dir, { recursive: true });
        const variant = { ...settings, narwhalArgs: [...settings.narwhalArgs, ...v.args] };
        const peer = await startNarwhal(variant, dir, upstream, fixture.publicKey, launch);
        try {
          const before = await upstream.counts();
          const secs = await nixCopy(peer.name, peer.base, fixture, settings, dir, 'cold');
          const reqs = upstreamTotal(before, await upstream.counts());
          // The same direct and nginx figures as the main row, for the ratios.
          record(v.id, 'direct', results.get('closureCold')?.direct);
          record(v.id, 'nginx', results.get('closureCold')?.nginx);
          record(v.id, 'narwhal', secs);
          record(`${v.id}Upstream`, 'narwhal', reqs);
          log(
            `cold nix copy via narwhal, ${v.label}: ${secs.toFixed(2)} s, ${reqs} upstream requests`,
          );
        } finally {
          await peer.stop();
        }
      });
    }
  }
  if (settings.run.closureWarm) await warmCopies(peers, fixture, settings, upstream, work);
}

/**
 * Warm copies: every narinfo and NAR of the closure in each peer's cache, then WARM_COPIES copies
 * through each, the peers taking turns (nginx, narwhal, narwhal, nginx, …; see wrkRounds for why).
 * Per peer: its first copy (narwhal's first is a just-started process's: its JIT has not compiled
 * the hot path yet), the median copy, and its CPU time per copy.
 */
async function warmCopies(peers, fixture, settings, upstream, work) {
  const ids = ['closureWarm', 'closureWarmMedian', 'closureWarmCpu'];
  const ready = [];
  for (const peer of peers) {
    await attempt('warm nix copy', ids, peer.name, async () => {
      const agent = new Agent({ keepAlive: true, maxSockets: 8 });
      const all = [fixture.top, fixture.blob, ...fixture.small];
      await Promise.all(
        Array.from({ length: 8 }, async (_, w) => {
          for (let i = w; i < all.length; i += 8) {
            const url = await narUrlVia(peer, all[i]);
            if (all[i] === fixture.blob) await warmNar(peer, url, all[i].fileSize);
            else await getOk(url, { agent });
          }
        }),
      );
      agent.destroy();
      ready.push(peer);
    });
  }
  if (ready.length === 0) return;
  await sleep(500); // let the last small NARs land in storage
  const before = await upstream.counts();
  const times = new Map(ready.map((p) => [p.name, []]));
  const cpu = new Map(ready.map((p) => [p.name, 0]));
  const failed = new Map();
  for (let i = 0; i < WARM_COPIES; i++) {
    for (const peer of roundOrder(ready, i)) {
      if (failed.has(peer.name)) continue;
      try {
        const cpu0 = peer.cpuSeconds();
        times
          .get(peer.name)
          .push(await nixCopy(peer.name, peer.base, fixture, settings, work, 'warm'));
        cpu.set(peer.name, cpu.get(peer.name) + peer.cpuSeconds() - cpu0);
      } catch (e) {
        failed.set(peer.name, e);
      }
    }
  }
  const reqs = upstreamTotal(before, await upstream.counts());
  if (reqs > 0) notes.push(`warm nix copies: ${reqs} upstream requests (all peers)`);
  for (const peer of ready) {
    await attempt('warm nix copy', ids, peer.name, async () => {
      const failure = failed.get(peer.name);
      if (failure) throw failure;
      const ts = times.get(peer.name);
      // CPU time moves less than wall time with what the host's other tenants do.
      record('closureWarmCpu', peer.name, (cpu.get(peer.name) / WARM_COPIES) * 1e3);
      record('closureWarm', peer.name, ts[0]);
      record('closureWarmMedian', peer.name, median(ts));
      log(`warm nix copies via ${peer.name}: ${ts.map((t) => t.toFixed(2)).join(', ')} s`);
    });
  }
}

/** narwhal answering every request itself: its closure prefetch off (cold-requests mode). */
const NO_PREFETCH = ['--cache-prefetch-narinfos', 'false', '--cache-prefetch-nars', 'false'];

/**
 * One client, one keep-alive connection, one request after another: the narinfo of each small
 * path, then its NAR (by the URL the narinfo gave), every one of them cold for the peer. The first
 * third of the paths is not measured (see coldWarmupPaths).
 */
async function coldRequests(column, base, fixture, upstream, peer) {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const warmup = coldWarmupPaths(fixture);
  let cpu0 = 0;
  let mainCpu0 = 0;
  const narinfos = [];
  const nars = [];
  const before = await upstream.counts();
  try {
    for (const [i, info] of fixture.small.entries()) {
      if (i === warmup) {
        // The first pairs only warm the peer up (V8 compiles narwhal's cold path meanwhile):
        // what is measured is a running service's cost, not a just-started process's.
        narinfos.length = 0;
        nars.length = 0;
        cpu0 = peer?.cpuSeconds() ?? 0;
        mainCpu0 = peer?.mainThreadCpuSeconds?.() ?? 0;
      }
      let t0 = now();
      const r = await getOk(`${base}/${info.hashPart}.narinfo`, { agent, text: true });
      narinfos.push(msSince(t0));
      const url = parseNarInfo(r.text).get('URL');
      if (!url) throw new Error(`${column}: narinfo of ${info.name} has no URL`);
      t0 = now();
      const nar = await getOk(new URL(url, `${base}/`).href, { agent });
      nars.push(msSince(t0));
      if (nar.bytes !== info.fileSize) {
        throw new Error(
          `${column}: NAR of ${info.name} has ${nar.bytes} bytes, not ${info.fileSize}`,
        );
      }
    }
  } finally {
    agent.destroy();
  }
  if (peer) record('coldPairCpu', column, ((peer.cpuSeconds() - cpu0) / narinfos.length) * 1e3);
  if (peer?.mainThreadCpuSeconds) {
    const seconds = peer.mainThreadCpuSeconds() - mainCpu0;
    record('coldPairMainCpu', column, (seconds / narinfos.length) * 1e3);
  }
  const reqs = upstreamTotal(before, await upstream.counts());
  const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const sorted = (xs) => [...xs].sort((a, b) => a - b);
  record('coldNarinfoP50', column, percentile(sorted(narinfos), 50));
  record('coldNarinfoMean', column, mean(narinfos));
  record('coldNarP50', column, percentile(sorted(nars), 50));
  record('coldNarMean', column, mean(nars));
  record('coldRequestsUpstream', column, reqs);
  log(
    `cold requests via ${column}: narinfo p50 ${percentile(sorted(narinfos), 50).toFixed(2)} ms, ` +
      `NAR p50 ${percentile(sorted(nars), 50).toFixed(2)} ms, ${reqs} upstream requests`,
  );
}

/** Paths of the closure asked for before cold requests are measured (a third of them). */
function coldWarmupPaths(fixture) {
  return Math.floor(fixture.small.length / 3);
}

async function coldRequestMeasures(nginx, fixture, settings, upstream, work, launch) {
  const ids = [
    'coldNarinfoP50',
    'coldNarinfoMean',
    'coldNarP50',
    'coldNarMean',
    'coldPairCpu',
    'coldPairMainCpu',
    'coldRequestsUpstream',
  ];
  await attempt('cold requests', ids, 'direct', () =>
    coldRequests('direct', upstream.url, fixture, upstream),
  );
  // Fresh peers, so that every request is cold for them.
  const starts = [
    ['nginx', (dir) => startNginx(nginx, dir, upstream)],
    [
      'narwhal',
      (dir) =>
        startNarwhal(
          { ...settings, narwhalArgs: [...settings.narwhalArgs, ...NO_PREFETCH] },
          dir,
          upstream,
          fixture.publicKey,
          launch,
        ),
    ],
  ];
  for (const [name, start] of starts) {
    await attempt('cold requests', ids, name, async () => {
      const dir = join(work, `cold-requests-${name}`);
      await mkdir(dir, { recursive: true });
      const peer = await start(dir);
      try {
        await coldRequests(name, peer.base, fixture, upstream, peer);
        record('rss', name, peer.peakRss() / MiB);
      } finally {
        await peer.stop();
      }
    });
  }
}

// =============================================================================================
// The table

function measureRows(settings, fixture) {
  const big = `${settings.narMib} MiB`;
  const wrk = `wrk -t${WRK_THREADS} -c${WRK_CONNECTIONS} -d${settings.wrkSeconds}s, median of ${HOT_ROUNDS} alternating rounds`;
  const rate = settings.mbps > 0 ? `${settings.mbps} MB/s` : 'unthrottled';
  const lat = settings.latencyMs > 0 ? `, upstream +${settings.latencyMs} ms/request` : '';
  const closure = `${fixture.small.length + 1} small paths + one ${big} path`;
  return [
    ['narinfoRps', `hot narinfo, ${wrk} (${HOT_URLS} URLs)`, 'req/s', 'higher', 0],
    ['narinfoCpu', 'hot narinfo under wrk, server CPU per request', 'µs', 'lower', 1],
    [
      'bareNarinfoRps',
      `reference: a bare node:http server (one thread) answering those bytes, ${wrk}`,
      'req/s',
      'higher',
      0,
    ],
    ['bareNarinfoCpu', 'reference: that bare server, CPU per request', 'µs', 'lower', 1],
    ['narinfoP50', `hot narinfo, 1 connection, p50 of ${LATENCY_REQUESTS}`, 'ms', 'lower', 3],
    ['narinfoP99', `hot narinfo, 1 connection, p99 of ${LATENCY_REQUESTS}`, 'ms', 'lower', 3],
    [
      'smallNarRps',
      `hot small NAR (${fixture.small[0].fileSize}-byte .nar.xz), ${wrk}`,
      'req/s',
      'higher',
      0,
    ],
    ['smallNarCpu', 'hot small NAR under wrk, server CPU per request', 'µs', 'lower', 1],
    [
      'bigSeqSeconds',
      `hot ${big} NAR, ${SEQUENTIAL_DOWNLOADS} sequential curl downloads`,
      's',
      'lower',
      2,
    ],
    [
      'bigSeqRate',
      `hot ${big} NAR, ${SEQUENTIAL_DOWNLOADS} sequential, throughput`,
      'MiB/s',
      'higher',
      0,
    ],
    [
      'bigParSeconds',
      `hot ${big} NAR, ${PARALLEL_DOWNLOADS} parallel downloads, wall`,
      's',
      'lower',
      2,
    ],
    [
      'bigParRate',
      `hot ${big} NAR, ${PARALLEL_DOWNLOADS} parallel, aggregate`,
      'MiB/s',
      'higher',
      0,
    ],
    ['hotUpstream', 'upstream requests during the hot measures', 'requests', 'must be 0', 0],
    [
      'herdWall',
      `cold herd: ${HERD_CLIENTS} clients, one ${big} .nar.xz, upstream ${rate}, wall, median of ${COLD_ROUNDS} alternating rounds`,
      's',
      'lower',
      2,
    ],
    ['herdTtfbMean', 'cold herd, mean time to first body byte', 'ms', 'lower', 0],
    ['herdTtfbMax', 'cold herd, max time to first body byte', 'ms', 'lower', 0],
    [
      'herdUpstreamGets',
      'cold herd, upstream GETs of the NAR (most of any round)',
      'GETs',
      'must be 1',
      0,
    ],
    [
      'herdCorrect',
      `cold herd, bodies matching the file's sha256 (fewest of any round)`,
      `of ${HERD_CLIENTS}`,
      `must be ${HERD_CLIENTS}`,
      0,
    ],
    ['herdCpu', 'cold herd, server CPU time (all threads; nginx: all processes)', 's', 'lower', 2],
    [
      'coldSingle',
      `one cold client of another ${big} NAR (direct: from the upstream), median of ${COLD_ROUNDS} rounds`,
      's',
      'lower',
      2,
    ],
    ['closureCold', `cold nix copy, ${closure}${lat}`, 's', 'lower', 2],
    ['closureColdUpstream', 'upstream requests during that cold copy', 'requests', 'info', 0],
    ...PREFETCH_VARIANTS.flatMap((v) => [
      [v.id, `the same, narwhal with ${v.label}`, 's', 'lower', 2],
      [`${v.id}Upstream`, 'upstream requests during that cold copy', 'requests', 'info', 0],
    ]),
    ['closureWarm', `warm nix copy, ${closure}, fresh store and client cache`, 's', 'lower', 2],
    [
      'closureWarmMedian',
      `warm nix copy, median of ${WARM_COPIES}, peers taking turns (a process serving for a while)`,
      's',
      'lower',
      2,
    ],
    ['closureWarmCpu', 'warm nix copy, server CPU per copy (all threads)', 'ms', 'lower', 0],
    [
      'coldNarinfoP50',
      `cold narinfo, one request after another, p50 (last ${fixture.small.length - coldWarmupPaths(fixture)} of ${fixture.small.length}; narwhal: no prefetch)${lat}`,
      'ms',
      'lower',
      2,
    ],
    ['coldNarinfoMean', 'cold narinfo, mean', 'ms', 'lower', 2],
    [
      'coldNarP50',
      `cold small NAR (${fixture.small[0].fileSize}-byte .nar.xz) after its narinfo, p50`,
      'ms',
      'lower',
      2,
    ],
    ['coldNarMean', 'cold small NAR, mean', 'ms', 'lower', 2],
    ['coldPairCpu', 'cold narinfo + NAR, server CPU per pair (all threads)', 'ms', 'lower', 2],
    [
      'coldPairMainCpu',
      'cold narinfo + NAR, CPU per pair of the event-loop thread alone (narwhal)',
      'ms',
      'lower',
      2,
    ],
    [
      'coldRequestsUpstream',
      `upstream requests for those ${fixture.small.length} narinfos and NARs`,
      'requests',
      'info',
      0,
    ],
    ['rss', 'peak RSS over the run (VmHWM; nginx: sum over its processes)', 'MiB', 'lower', 0],
  ];
}

function fmt(v, digits) {
  if (v === undefined) return '';
  if (typeof v !== 'number') return String(v);
  if (!Number.isFinite(v)) return 'n/a';
  return v.toLocaleString('en-US', {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

function ratio(a, b) {
  if (typeof a !== 'number' || typeof b !== 'number' || !(b > 0) || !Number.isFinite(a)) return '';
  return `${a / b >= 10 ? (a / b).toFixed(1) : (a / b).toFixed(2)}×`;
}

function printTable(settings, fixture) {
  const header = [
    'measure',
    'unit',
    'better',
    'direct',
    'nginx',
    'narwhal',
    'narwhal/nginx',
    'narwhal/direct',
  ];
  const rows = [];
  for (const [id, label, unit, better, digits] of measureRows(settings, fixture)) {
    const r = results.get(id);
    if (!r) continue;
    const plain = better === 'higher' || better === 'lower';
    rows.push([
      label,
      unit,
      better,
      fmt(r.direct, digits),
      fmt(r.nginx, digits),
      fmt(r.narwhal, digits),
      plain ? ratio(r.narwhal, r.nginx) : '',
      plain ? ratio(r.narwhal, r.direct) : '',
    ]);
  }
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells) =>
    `| ${cells.map((c, i) => (i < 3 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  console.log(line(header));
  console.log(
    `| ${widths.map((w, i) => (i < 3 ? '-'.repeat(w) : `${'-'.repeat(w - 1)}:`)).join(' | ')} |`,
  );
  for (const r of rows) console.log(line(r));
}

// =============================================================================================

async function benchMain() {
  const settings = readSettings();
  const main = join(settings.dist, 'main.js');
  if (!existsSync(main))
    fail(`${main} not found; run \`npm run build\` first (or set NARWHAL_DIST).`);
  const require = createRequire(import.meta.url);
  const { encodeNix32 } = require(join(settings.dist, 'nix/base32.js'));
  const { NODE_FLAGS, RUNTIME_ENV = {} } = require(join(settings.dist, 'runtime-flags.js'));
  // How `npm start` launches narwhal: its Node options and environment.
  const launch = { flags: NODE_FLAGS, env: RUNTIME_ENV };

  const nginx = findTool(process.env.BENCH_NGINX ?? '/usr/sbin/nginx', 'nginx');
  const missing = [];
  if (!nginx) missing.push('nginx (Debian: nginx-light)');
  if (settings.run.hot && !findTool('wrk')) missing.push('wrk');
  if (settings.run.hot && !findTool('curl')) missing.push('curl');
  if (!findTool('nix') || !findTool('nix-build')) missing.push('nix (Debian: nix-bin)');
  if (missing.length > 0) {
    console.error(
      `bench: missing ${missing.join(', ')}. Install what is missing, e.g.:\n` +
        '  apt-get install nginx-light wrk curl nix-bin',
    );
    process.exit(2);
  }
  const version = (cmd, args) => {
    const r = spawnSync(cmd, args, { encoding: 'utf8', env: nixEnv(tmpdir()) });
    return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim().split('\n')[0];
  };
  const nixVersion = version('nix', ['--version']);

  let fixture;
  let upstream;
  const peers = [];
  let cleaned = false;
  const cleanup = async () => {
    if (cleaned) return;
    cleaned = true;
    for (const p of peers) await p.stop().catch(() => {});
    await upstream?.stop().catch(() => {});
    if (workDir && !keepWork) removeTreeSync(workDir);
    else if (workDir) log(`kept ${workDir}`);
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.once(sig, () => {
      log(`${sig}: stopping the servers and removing the temporary directory`);
      void cleanup().finally(() => process.exit(130));
    });
  }

  try {
    fixture = await prepareFixture(settings, nixVersion);
    workDir = await mkdtemp(join(tmpdir(), 'narwhal-compare-'));
    keepWork = settings.keep;
    upstream = await startUpstream(fixture, settings);
    log(
      `upstream at ${upstream.url} (NARs ${settings.mbps ? `${settings.mbps} MB/s` : 'unthrottled'}, +${settings.latencyMs} ms per request)`,
    );
    // cold-requests starts fresh peers of its own.
    if (!settings.run.coldRequests) {
      peers.push(await startNginx(nginx, workDir, upstream));
      log(`nginx (pid ${peers[0].pid}) at ${peers[0].base}`);
      peers.push(await startNarwhal(settings, workDir, upstream, fixture.publicKey, launch));
      log(`narwhal (pid ${peers[1].pid}) at ${peers[1].base}`);
    }
    const load0 = loadavg();

    if (settings.run.closureCold || settings.run.closureWarm) {
      await closureMeasures(peers, fixture, settings, upstream, workDir, launch);
    }
    if (settings.run.coldRequests) {
      await coldRequestMeasures(nginx, fixture, settings, upstream, workDir, launch);
    }
    if (settings.run.hot) {
      await hotMeasures(peers, fixture, settings, upstream, workDir);
    }
    if (settings.run.herd) {
      await coldHerds(peers, fixture, upstream, encodeNix32);
      await coldSingles(peers, fixture, upstream, encodeNix32);
    }
    for (const peer of peers) {
      if (!peer.alive()) errors.push(`${peer.name} exited during the run:\n${peer.output()}`);
      record('rss', peer.name, peer.peakRss() / MiB);
    }

    const load1 = loadavg();
    await cleanup();
    console.log(
      `narwhal vs. nginx proxy_cache, BENCH_MODE=${settings.mode}, ${new Date().toISOString()}\n` +
        `${cpus().length} CPUs, load average ${load0[0].toFixed(2)} at start, ${load1[0].toFixed(2)} at end; ` +
        `node ${process.version}, ${version(nginx, ['-v'])}, ${version('wrk', ['--version'])}, ${nixVersion}\n` +
        `upstream: loopback, NAR bodies at ${settings.mbps ? `${settings.mbps} MB/s` : 'full speed'} per response, ` +
        `+${settings.latencyMs} ms per request; big NARs ${settings.narMib} MiB ` +
        `(.nar.xz ${(fixture.herd[0].fileSize / MiB).toFixed(1)} MiB); narwhal: defaults + ` +
        `--prometheus-enabled true${settings.narwhalArgs.length ? ` ${settings.narwhalArgs.join(' ')}` : ''}` +
        `${settings.nodeArgs.length ? `, node ${settings.nodeArgs.join(' ')}` : ''}\n`,
    );
    printTable(settings, fixture);
    for (const n of notes) console.log(`note: ${n}`);
  } catch (e) {
    errors.push(e instanceof Error ? (e.stack ?? e.message) : String(e));
    await cleanup();
    if (fixture && results.size > 0) printTable(settings, fixture);
  }
  if (errors.length > 0) {
    console.error(`\nbench: ${errors.length} failure(s):`);
    for (const e of errors) console.error(`- ${e}`);
    process.exitCode = 1;
  }
  log('done');
}

// Last, once every constant above is initialised.
if (process.argv[2] === UPSTREAM_ROLE) {
  await upstreamChild();
} else {
  await benchMain();
}
