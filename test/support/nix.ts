import { spawn, spawnSync } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { sha256HexOf } from './hash';

/**
 * Helpers that drive the real Nix client (tested with Debian's nix-bin 2.8, as root, no daemon).
 */

const NIX_CONFIG = [
  'experimental-features = nix-command',
  'sandbox = false',
  'build-users-group =',
  'substituters =',
].join('\n');

/**
 * Environment for every nix invocation. Pass `cacheHome` to give the client its own
 * `~/.cache/nix` (narinfo disk cache): otherwise a negative lookup cached by an earlier run
 * against the same 127.0.0.1 port could make the client skip a request for an hour.
 */
export function nixEnv(cacheHome?: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    NIX_CONFIG,
    PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
  };
  if (cacheHome !== undefined) env.XDG_CACHE_HOME = cacheHome;
  return env;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Milliseconds before the child is killed; default 120 s. */
  timeoutMs?: number;
}

/** Runs a command to completion. Never rejects on a non-zero exit; see `runOk`. */
export function run(
  cmd: string,
  args: readonly string[],
  opts: RunOptions = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 120_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const result: RunResult = {
        code,
        signal,
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: Buffer.concat(stderr).toString('utf8'),
      };
      if (timedOut) {
        reject(new Error(`${describeCommand(cmd, args)} timed out\n${result.stderr}`));
      } else {
        resolve(result);
      }
    });
  });
}

/** Like `run`, but rejects with the command's stderr unless it exits 0. */
export async function runOk(
  cmd: string,
  args: readonly string[],
  opts: RunOptions = {},
): Promise<RunResult> {
  const result = await run(cmd, args, opts);
  if (result.code !== 0) {
    throw new Error(
      `${describeCommand(cmd, args)} exited with ${result.code ?? result.signal}\n` +
        `--- stderr ---\n${result.stderr}\n--- stdout ---\n${result.stdout}`,
    );
  }
  return result;
}

function describeCommand(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
}

/**
 * Whether the real Nix client is available. Without it the suite is skipped loudly, except on CI
 * (`CI=true`), where a missing client must fail the run instead of hiding the suite.
 * Use as `describe.skipIf(!requireNix())(…)`.
 */
export function requireNix(): boolean {
  const probe = spawnSync('nix', ['--version'], { env: nixEnv(), encoding: 'utf8' });
  if (probe.status === 0) return true;
  const reason = probe.error ? probe.error.message : probe.stderr.trim();
  if (process.env.CI === 'true') {
    throw new Error(`The real-client e2e suite needs Nix on PATH (CI=true): ${reason}`);
  }
  console.warn(
    `\n*** SKIPPING the real Nix client e2e suite: \`nix\` is not usable (${reason}).\n` +
      '*** Install it (e.g. apt-get install nix-bin) to run it; on CI this is an error.\n',
  );
  return false;
}

/** A store path built by nix-build into the machine's store. */
export interface NixStorePath {
  /** Full store path, e.g. /nix/store/<hash>-narwhal-e2e-top */
  path: string;
  /** The 32-character hash part, the narinfo's file name. */
  hashPart: string;
}

export interface UpstreamFixture {
  /** Directory of a `file://` binary cache, served by FakeUpstream. */
  dir: string;
  keyName: string;
  /** `name:base64` public key. */
  publicKey: string;
  secretKeyFile: string;
  compression: 'xz' | 'zstd';
}

export interface Fixtures {
  leaf: NixStorePath;
  mid: NixStorePath;
  /** top → mid → leaf, and top → leaf. */
  top: NixStorePath;
  /** A single file of 32 MiB of random bytes, published to upstream B only. */
  blob: NixStorePath;
  /** Small uncached paths for the fault-injection steps, published to upstream A. */
  victimCorrupt: NixStorePath;
  victimTruncate: NixStorePath;
  /** xz cache with leaf, mid, top and the two victims, signed by up-a-1. */
  upstreamA: UpstreamFixture;
  /** zstd cache with the blob, signed by up-b-1. */
  upstreamB: UpstreamFixture;
}

const BLOB_BYTES = 32 * 1024 * 1024;
const VICTIM_BYTES = 1024 * 1024;

/**
 * `mk name script`: a derivation whose builder runs `script` in /bin/sh. Builders run without a
 * sandbox; they must set PATH themselves. For the `let` of a test's Nix expression.
 */
export const NIX_MK = `mk = name: script: builtins.derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "export PATH=/bin:/usr/bin; \${script}" ];
  };`;

// Outputs stay in /nix/store between runs, so only the first run on a machine pays for building
// (the blob is random once).
const FIXTURES_NIX = `
let
  ${NIX_MK}
  leaf = mk "narwhal-e2e-leaf" "mkdir $out; echo leaf > $out/data";
  mid = mk "narwhal-e2e-mid" "mkdir $out; echo \${leaf} > $out/ref";
  top = mk "narwhal-e2e-top" "mkdir $out; echo \${mid} > $out/ref; echo \${leaf} > $out/leaf-ref";
  blob = mk "narwhal-e2e-blob" "head -c ${BLOB_BYTES} /dev/urandom > $out";
  victim = tag: mk "narwhal-e2e-victim-\${tag}" "mkdir $out; head -c ${VICTIM_BYTES} /dev/urandom > $out/data";
in {
  inherit leaf mid top blob;
  victimCorrupt = victim "corrupt";
  victimTruncate = victim "truncate";
}
`;

const ATTRS = {
  leaf: 'narwhal-e2e-leaf',
  mid: 'narwhal-e2e-mid',
  top: 'narwhal-e2e-top',
  blob: 'narwhal-e2e-blob',
  victimCorrupt: 'narwhal-e2e-victim-corrupt',
  victimTruncate: 'narwhal-e2e-victim-truncate',
} as const;
type FixtureAttr = keyof typeof ATTRS;

export function nixStorePath(path: string): NixStorePath {
  const base = path.slice(path.lastIndexOf('/') + 1);
  return { path, hashPart: base.slice(0, 32) };
}

/**
 * Builds the fixture paths with nix-build, makes two signing keys and publishes two real
 * binary caches under `workDir` (upstream-a: xz, upstream-b: zstd). Signing happens through the
 * cache's `secret-key` parameter, so the local store's own signatures are never touched.
 */
export async function buildFixtures(workDir: string): Promise<Fixtures> {
  const env = nixEnv(join(workDir, 'xdg-cache'));
  await mkdir(workDir, { recursive: true });
  const nixFile = join(workDir, 'fixtures.nix');
  await writeFile(nixFile, FIXTURES_NIX);

  const attrs = Object.keys(ATTRS) as FixtureAttr[];
  const built = await runOk(
    'nix-build',
    [nixFile, '--no-out-link', ...attrs.flatMap((a) => ['-A', a])],
    { env, timeoutMs: 300_000 },
  );
  const outPaths = built.stdout.split('\n').filter((l) => l.startsWith('/nix/store/'));
  const paths = {} as Record<FixtureAttr, NixStorePath>;
  for (const attr of attrs) {
    const found = outPaths.find((p) => p.endsWith(`-${ATTRS[attr]}`));
    if (!found) throw new Error(`nix-build did not print the ${attr} output:\n${built.stdout}`);
    paths[attr] = nixStorePath(found);
  }

  const [upstreamA, upstreamB] = await Promise.all([
    makeUpstream(workDir, 'upstream-a', 'up-a-1', 'xz', env),
    makeUpstream(workDir, 'upstream-b', 'up-b-1', 'zstd', env),
  ]);
  await Promise.all([
    publish(upstreamA, [paths.top.path, paths.victimCorrupt.path, paths.victimTruncate.path], env),
    publish(upstreamB, [paths.blob.path], env),
  ]);
  return { ...paths, upstreamA, upstreamB };
}

async function makeUpstream(
  workDir: string,
  name: string,
  keyName: string,
  compression: UpstreamFixture['compression'],
  env: NodeJS.ProcessEnv,
): Promise<UpstreamFixture> {
  const dir = join(workDir, name);
  const secretKeyFile = join(workDir, `${keyName}.sk`);
  const publicKeyFile = join(workDir, `${keyName}.pk`);
  await runOk('nix-store', ['--generate-binary-cache-key', keyName, secretKeyFile, publicKeyFile], {
    env,
  });
  const publicKey = (await readFile(publicKeyFile, 'utf8')).trim();
  return { dir, keyName, publicKey, secretKeyFile, compression };
}

async function publish(
  upstream: UpstreamFixture,
  paths: string[],
  env: NodeJS.ProcessEnv,
): Promise<void> {
  const to = `file://${upstream.dir}?compression=${upstream.compression}&secret-key=${upstream.secretKeyFile}`;
  await runOk('nix', ['copy', '--to', to, ...paths], { env, timeoutMs: 300_000 });
}

export interface ParsedNarInfo {
  fields: Map<string, string>;
  sigs: string[];
}

/** Minimal `Key: value` reader for assertions; Sig may repeat. */
export function parseNarInfo(text: string): ParsedNarInfo {
  const fields = new Map<string, string>();
  const sigs: string[] = [];
  for (const line of text.split('\n')) {
    const colon = line.indexOf(': ');
    if (colon <= 0) continue;
    const key = line.slice(0, colon);
    const value = line.slice(colon + 2);
    if (key === 'Sig') sigs.push(value);
    else fields.set(key, value);
  }
  return { fields, sigs };
}

/** Reads an upstream cache's narinfo for a fixture straight from disk. */
export async function readUpstreamNarInfo(
  upstream: UpstreamFixture,
  fixture: NixStorePath,
): Promise<ParsedNarInfo> {
  return parseNarInfo(await readFile(join(upstream.dir, `${fixture.hashPart}.narinfo`), 'utf8'));
}

/**
 * `nix copy --from <from>` of `paths` into a fresh local store at `store` (a directory), trusting
 * only `publicKey`; rejects with the client's stderr unless it succeeds.
 */
export function nixCopyFrom(
  from: string,
  store: string,
  publicKey: string,
  paths: string[],
  env: NodeJS.ProcessEnv,
): Promise<RunResult> {
  return runOk(
    'nix',
    [
      'copy',
      '--from',
      from,
      '--store',
      store,
      '--option',
      'trusted-public-keys',
      publicKey,
      ...paths,
    ],
    { env, timeoutMs: 120_000 },
  );
}

/**
 * sha256 (hex) of the NAR serialisation of `path` as `nix store dump-path` writes it — of the
 * machine's store, or of the local store at `store` — streamed, never held in memory.
 */
export async function dumpPathHash(
  path: string,
  env: NodeJS.ProcessEnv,
  store?: string,
): Promise<string> {
  const args = ['store', 'dump-path', ...(store ? ['--store', store] : []), path];
  const child = spawn('nix', args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
  const exited = new Promise<number | null>((done, reject) => {
    child.once('error', reject);
    child.once('close', (code) => done(code));
  });
  const hash = await sha256HexOf(child.stdout);
  const code = await exited;
  if (code !== 0) throw new Error(`nix ${args.join(' ')} exited with ${code}\n${stderr}`);
  return hash;
}
