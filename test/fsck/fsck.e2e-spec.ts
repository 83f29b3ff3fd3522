import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { DataSource } from 'typeorm';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openDataSource } from '../../src/database/data-source';
import {
  NarFileEntity,
  NarInfoReferenceEntity,
  NarInfoSignatureEntity,
} from '../../src/database/entities';
import {
  DEFAULT_ORPHAN_GRACE_MS,
  fsck,
  FsckRefusedError,
  type FsckEvent,
  type FsckOptions,
  type FsckProblem,
  type FsckSummary,
} from '../../src/fsck/fsck';
import { inspectorFor, type ObjectInspector } from '../../src/fsck/object-info';
import { FilesystemNarStore } from '../../src/storage/filesystem/filesystem-nar-store';
import type { NarStore } from '../../src/storage/nar-store';
import { S3NarStore } from '../../src/storage/s3/s3-nar-store';
import {
  reachableServer,
  type DatabaseServer,
  type Dialect,
  type FreshDatabase,
} from '../database/database-servers';
import { startS3rverOrSkip, type S3rverFixture } from '../storage/s3rver';
import { makeNar, TestCache, type TestNar } from './test-cache';

// fsck against real databases (a SQLite file; PostgreSQL and MariaDB when reachable) and real stores
// (the filesystem store; the S3 store on s3rver), on a cache built the way narwhal builds one and
// then damaged on purpose in every way fsck knows.

const REPO_ROOT = resolve(__dirname, '..', '..');
/** A clock far enough ahead that every object is older than the orphan grace. */
const LATER = () => Date.now() + 2 * DEFAULT_ORPHAN_GRACE_MS;

interface StoreUnderTest {
  store: NarStore;
  inspect: ObjectInspector;
  close(): Promise<void>;
}

interface StoreKind {
  name: string;
  /** Null to skip (s3rver unavailable outside CI). */
  open(dir: string): Promise<StoreUnderTest | null>;
}

let s3rver: S3rverFixture | null = null;
let s3rverStarted = false;

const STORE_KINDS: StoreKind[] = [
  {
    name: 'filesystem store',
    async open(dir) {
      const store = new FilesystemNarStore(join(dir, 'store'));
      await store.init();
      return { store, inspect: inspectorFor(store), close: () => Promise.resolve() };
    },
  },
  {
    name: 'S3 store (s3rver)',
    async open(dir) {
      if (!s3rverStarted) {
        s3rverStarted = true;
        s3rver = await startS3rverOrSkip();
      }
      if (!s3rver) return null;
      const config = s3rver.storageConfig(await s3rver.createBucket(), join(dir, 'spool'), 'c/');
      const store = new S3NarStore(config);
      await store.init();
      return {
        store,
        inspect: inspectorFor(store, config),
        close: () => store.close(),
      };
    },
  },
];

afterAll(async () => {
  await s3rver?.stop();
});

interface Run {
  summary: FsckSummary;
  problems: FsckProblem[];
  warnings: string[];
}

const servers = new Map<Dialect, Promise<DatabaseServer | null>>();
/** The database server for `dialect`, probed once (null, after a loud warning, when unreachable). */
function server(dialect: Dialect): Promise<DatabaseServer | null> {
  let s = servers.get(dialect);
  if (!s) servers.set(dialect, (s = reachableServer(dialect)));
  return s;
}

const COMBINATIONS: Array<{ dialect: Dialect; kind: StoreKind }> = [
  { dialect: 'sqlite', kind: STORE_KINDS[0] },
  { dialect: 'sqlite', kind: STORE_KINDS[1] },
  { dialect: 'postgres', kind: STORE_KINDS[0] },
  { dialect: 'mariadb', kind: STORE_KINDS[0] },
];

for (const { dialect, kind } of COMBINATIONS) {
  describe(`fsck on ${dialect} + ${kind.name}`, () => {
    let dir: string;
    let db: FreshDatabase | null;
    let ds: DataSource | undefined;
    let sut: StoreUnderTest | null;
    let cache: TestCache;

    beforeEach(async (ctx) => {
      dir = await mkdtemp(join(tmpdir(), 'narwhal-fsck-'));
      db = null;
      ds = undefined;
      sut = await kind.open(dir);
      const s = await server(dialect);
      if (!sut || !s) return ctx.skip();
      db = await s.createDatabase();
      ds = await openDataSource(db.config);
      cache = new TestCache(ds, sut.store);
    });

    afterEach(async () => {
      await sut?.close();
      await ds?.destroy();
      await db?.drop();
      await rm(dir, { recursive: true, force: true });
    });

    async function run(options: Partial<FsckOptions> = {}, store?: NarStore): Promise<Run> {
      const problems: FsckProblem[] = [];
      const warnings: string[] = [];
      const report = (e: FsckEvent) => {
        if (e.type === 'problem') problems.push(e.problem);
        if (e.type === 'warning') warnings.push(e.message);
      };
      const summary = await fsck({
        ds: ds!,
        store: store ?? sut!.store,
        inspect: store ? inspectorFor(store) : sut!.inspect,
        options: {
          repair: false,
          dryRun: false,
          verifyContent: false,
          orphanGraceMs: DEFAULT_ORPHAN_GRACE_MS,
          now: LATER,
          ...options,
        },
        report,
      });
      return { summary, problems, warnings };
    }

    /** `kind key` of each problem, sorted, for exact comparison. */
    const found = (r: Run) => r.problems.map((p) => `${p.kind} ${p.key}`).sort();

    /** A healthy cache: narinfo + xz NARs, an uncompressed one, one stored without a narinfo. */
    async function healthyCache() {
      return {
        a: await cache.addStored(),
        b: await cache.addStored({ size: 256 * 1024 }),
        c: await cache.addStored(),
        d: await cache.addStored({ compression: 'none' }),
        e: await cache.addStored(),
        bare: await cache.addStoredWithoutNarInfo(),
      };
    }

    it('finds nothing wrong with a healthy cache, content included', async () => {
      const nars = await healthyCache();
      const notFetched = await makeNar();
      await cache.saveNarInfo(notFetched); // a narinfo whose NAR is not stored (yet) is normal

      const r = await run({ verifyContent: true });

      expect(r.problems).toEqual([]);
      expect(r.warnings).toEqual([]);
      expect(r.summary).toMatchObject({
        storedNars: 6,
        contentVerified: 6,
        contentUnverifiable: 0,
        objects: 6,
        youngObjectsSkipped: 0,
        narInfos: 6,
        remaining: 0,
      });
      expect(await cache.storedSize(nars.bare.key)).toBe(nars.bare.file.length);
    });

    it('finds each kind of damage; --dry-run changes nothing; --repair fixes it all', async () => {
      const { a, b, c, d, e, bare } = await healthyCache();
      // (1) missing: the object of a stored row is gone.
      await sut!.store.delete(a.key);
      // (2) orphan: an object nobody recorded (older than the grace by the clock given to fsck).
      const orphan = await makeNar();
      await cache.putObject(orphan.key, orphan.file);
      // (3) size mismatch: a truncated object.
      await cache.putObject(b.key, b.file.subarray(0, b.file.length - 100));
      // (4) hash mismatch: one byte flipped, same size (only --verify-content sees it) — in an xz
      // NAR and in one stored without a narinfo, checked by FileHash alone.
      await cache.putObject(c.key, flipByte(c.file));
      await cache.putObject(bare.key, flipByte(bare.file));
      // (5) dangling narinfo: its nar_files row is gone.
      const dangling = await makeNar();
      await cache.saveNarInfo(dangling);
      await ds!.getRepository(NarFileEntity).delete({ key: dangling.key });

      const sizeOnly = await run();
      expect(found(sizeOnly)).toEqual(
        [
          `missing ${a.key}`,
          `orphan ${orphan.key}`,
          `size-mismatch ${b.key}`,
          `dangling-narinfo ${dangling.hash}`,
        ].sort(),
      );
      expect(sizeOnly.problems.every((p) => p.action === 'none')).toBe(true);
      expect(sizeOnly.summary.remaining).toBe(4);

      const expected = [
        `missing ${a.key}`,
        `orphan ${orphan.key}`,
        `size-mismatch ${b.key}`,
        `hash-mismatch ${c.key}`,
        `hash-mismatch ${bare.key}`,
        `dangling-narinfo ${dangling.hash}`,
      ].sort();
      const checked = await run({ verifyContent: true });
      expect(found(checked)).toEqual(expected);
      expect(checked.summary).toMatchObject({ storedNars: 6, objects: 6, narInfos: 6 });
      expect(checked.summary.found).toEqual({
        missing: 1,
        orphan: 1,
        'size-mismatch': 1,
        'hash-mismatch': 2,
        'dangling-narinfo': 1,
        'leftover-spool': 0,
        unreadable: 0,
      });
      expect(checked.summary.remaining).toBe(6);

      const before = await cache.snapshot();
      const dry = await run({ verifyContent: true, repair: true, dryRun: true });
      expect(found(dry)).toEqual(expected);
      expect(dry.problems.every((p) => p.action === 'would-repair')).toBe(true);
      expect(dry.summary.remaining).toBe(6);
      expect(await cache.snapshot()).toEqual(before);

      const repaired = await run({ verifyContent: true, repair: true });
      expect(found(repaired)).toEqual(expected);
      expect(repaired.problems.every((p) => p.action === 'repaired')).toBe(true);
      expect(repaired.summary.remaining).toBe(0);

      // Broken NARs are no longer stored (they will be fetched again), bad objects are gone…
      for (const n of [a, b, c, bare]) {
        expect(await cache.storedSize(n.key)).toBeNull();
        expect(await sut!.store.stat(n.key)).toBeNull();
      }
      expect(await sut!.store.stat(orphan.key)).toBeNull();
      // …the dangling narinfo is gone with its references and signatures…
      expect(await cache.narInfos.find(dangling.hash!)).toBeNull();
      const leftovers = await Promise.all([
        ds!.getRepository(NarInfoReferenceEntity).countBy({ narInfoHash: dangling.hash! }),
        ds!.getRepository(NarInfoSignatureEntity).countBy({ narInfoHash: dangling.hash! }),
      ]);
      expect(leftovers).toEqual([0, 0]);
      // …and everything healthy is untouched.
      for (const n of [d, e]) {
        expect(await cache.storedSize(n.key)).toBe(n.file.length);
        expect(await cache.readObject(n.key)).toEqual(n.file);
      }
      for (const n of [a, b, c, d, e]) expect(await cache.narInfos.find(n.hash!)).not.toBeNull();

      const again = await run({ verifyContent: true, repair: true });
      expect(again.problems).toEqual([]);
      expect(again.summary).toMatchObject({ storedNars: 2, objects: 2, remaining: 0 });
    });

    it('checks a NAR stored by name against the NarHash of a narinfo that names it', async () => {
      const { bare } = await healthyCache();
      // A narinfo arrives that signs another NarSize for the same file (the bytes hash right).
      const lying = {
        ...bare,
        hash: bare.narInfo.storePath.split('/')[3].slice(0, 32),
        narInfo: { ...bare.narInfo, narSize: bare.narInfo.narSize + 1 },
      };
      await cache.saveNarInfo(lying);
      const r = await run({ verifyContent: true });
      expect(found(r)).toEqual([`hash-mismatch ${bare.key}`]);
      expect(r.problems[0].detail).toMatch(/NarSize/);
    });

    it('reports spool files left by a crash once older than the grace, and --repair deletes them', async () => {
      await healthyCache();
      const spool = sut!.store.spool;
      await spool.init();
      const left = join(spool.dir, 'a-left-over.0123abcd.456789abcdef.part');
      await writeFile(left, Buffer.alloc(1000));
      const young = await run({ now: () => Date.now() });
      expect(found(young)).toEqual([]);
      expect(young.summary.spools).toBe(1);

      const old = await run();
      expect(found(old)).toEqual(['leftover-spool a-left-over.0123abcd.456789abcdef.part']);
      const repaired = await run({ repair: true });
      expect(repaired.problems.map((p) => p.action)).toEqual(['repaired']);
      expect(existsSync(left)).toBe(false);
    });

    it('leaves objects without a stored row alone while they are younger than the grace', async () => {
      await healthyCache();
      const young = await makeNar();
      await cache.putObject(young.key, young.file);
      // A download between committing its object and marking the row stored looks just like this.
      await cache.saveNarInfo(young);

      const now = await run({ repair: true, now: Date.now });
      expect(now.problems).toEqual([]);
      expect(now.summary.youngObjectsSkipped).toBe(1);
      expect(await cache.readObject(young.key)).toEqual(young.file);

      const noGrace = await run({ orphanGraceMs: 0, now: Date.now });
      expect(found(noGrace)).toEqual([`orphan ${young.key}`]);
      expect(noGrace.problems[0].detail).toContain('its row is not marked stored');
    });

    it('does not count a row as broken when narwhal stored it meanwhile', async () => {
      const n = await makeNar();
      await cache.saveNarInfo(n);
      await cache.putObject(n.key, n.file); // committed, row not yet marked stored
      await cache.files.markStored(n.key, n.file.length);
      const r = await run({ verifyContent: true, repair: true });
      expect(r.problems).toEqual([]);
      expect(r.summary).toMatchObject({ storedNars: 1, contentVerified: 1, remaining: 0 });
    });

    it('refuses to repair when the storage looks like another cache (or none)', async () => {
      const nars: TestNar[] = [];
      for (let i = 0; i < 20; i++) nars.push(await cache.addStored({ size: 1024 }));
      const emptyDir = await mkdtemp(join(tmpdir(), 'narwhal-fsck-empty-'));
      try {
        const empty = new FilesystemNarStore(emptyDir);
        await empty.init();
        const before = await cache.snapshot();
        await expect(run({ repair: true }, empty)).rejects.toThrow(FsckRefusedError);
        expect(await cache.snapshot()).toEqual(before);
        // Checking only: a loud warning, and the (true) report.
        const checked = await run({}, empty);
        expect(checked.warnings).toHaveLength(1);
        expect(checked.summary.found.missing).toBe(20);
      } finally {
        await rm(emptyDir, { recursive: true, force: true });
      }
    });
  });
}

describe('narwhal fsck (the built CLI)', () => {
  let dir: string;

  beforeAll(() => {
    buildIfStale();
  });

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'narwhal-fsck-cli-'));
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('exits 1 while problems remain, 0 after --repair; 2 for bad settings', async () => {
    // A data path as narwhal leaves it: narwhal.sqlite and store/ under --cache-data-path.
    const ds = await openDataSource({ kind: 'sqlite', path: join(dir, 'narwhal.sqlite') });
    const store = new FilesystemNarStore(join(dir, 'store'));
    await store.init();
    const cache = new TestCache(ds, store);
    let missing: TestNar, truncated: TestNar, dangling: TestNar, orphan: TestNar;
    try {
      missing = await cache.addStored();
      truncated = await cache.addStored();
      await cache.addStored();
      await store.delete(missing.key);
      await cache.putObject(truncated.key, truncated.file.subarray(1));
      dangling = await makeNar();
      await cache.saveNarInfo(dangling);
      await ds.getRepository(NarFileEntity).delete({ key: dangling.key });
      orphan = await makeNar();
      await cache.putObject(orphan.key, orphan.file);
    } finally {
      await ds.destroy();
    }
    const data = ['--cache-data-path', dir];

    const check = await cli([...data, '--verify-content']);
    expect(check.code, check.output).toBe(1);
    expect(check.output).toContain(`missing          ${missing.key}`);
    expect(check.output).toContain(`size-mismatch    ${truncated.key}`);
    expect(check.output).toContain(`dangling-narinfo ${dangling.hash}`);
    expect(check.output).not.toContain(orphan.key); // younger than the default grace
    expect(check.output).toContain('3 problems found, 3 remain (run with --repair to fix them)');

    const dry = await cli([...data, '--repair', '--dry-run', '--orphan-grace', '0s']);
    expect(dry.code, dry.output).toBe(1);
    expect(dry.output).toContain(`orphan           ${orphan.key}`);
    expect(dry.output).toContain('4 problems found, 4 remain');

    const repair = await cli([...data, '--repair', '--verify-content', '--orphan-grace', '0s']);
    expect(repair.code, repair.output).toBe(0);
    expect(repair.output).toContain('4 problems found, all repaired');

    const after = await cli([...data, '--verify-content', '--orphan-grace', '0s']);
    expect(after.code, after.output).toBe(0);
    expect(after.output).toContain('no problems found');
    expect(after.output).toMatch(/checked 1 stored NARs \(1 content-verified/);

    const badGrace = await cli([...data, '--orphan-grace', 'soon']);
    expect(badGrace.code, badGrace.output).toBe(2);
    expect(badGrace.output).toContain('--orphan-grace');

    const nowhere = join(dir, 'nowhere');
    const noData = await cli(['--cache-data-path', nowhere]);
    expect(noData.code, noData.output).toBe(2);
    expect(noData.output).toContain('no database at');
    expect(existsSync(nowhere)).toBe(false); // fsck created nothing
  });
});

function flipByte(b: Buffer): Buffer {
  const copy = Buffer.from(b);
  copy[copy.length >> 1] ^= 0x01;
  return copy;
}

/** Runs `node dist/main.js fsck …` with settings from its arguments only. */
function cli(args: string[]): Promise<{ code: number | null; output: string }> {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(CACHE_|NARWHAL_|SERVER_|LOG_LEVEL)/.test(k)) env[k] = v;
  }
  const child = spawn(process.execPath, ['dist/main.js', 'fsck', ...args], {
    cwd: REPO_ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  return new Promise((done, reject) => {
    child.once('error', reject);
    child.once('close', (code) => done({ code, output }));
  });
}

/** `npm test` builds first (pretest); a lone `vitest run` may find dist older than the sources. */
function buildIfStale(): void {
  const built = join(REPO_ROOT, 'dist', 'fsck', 'fsck.command.js');
  const sources = [join(REPO_ROOT, 'src', 'main.ts'), ...srcFiles(join(REPO_ROOT, 'src', 'fsck'))];
  const stale =
    !existsSync(built) || sources.some((s) => statSync(s).mtimeMs > statSync(built).mtimeMs);
  if (!stale) return;
  const r = spawnSync('npm', ['run', 'build'], { cwd: REPO_ROOT, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`npm run build failed:\n${r.stdout}${r.stderr}`);
}

function srcFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.spec.ts'))
    .map((f) => join(dir, f));
}
