import { randomBytes } from 'node:crypto';
import { readdirSync, readlinkSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import type { Readable } from 'node:stream';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { transformFile } from '@swc/core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NotFoundError } from '../../common/errors';
import { FilesystemNarStore } from './filesystem-nar-store';

const KEY_A = '1dj881h51cx0jzblhskrwhgymdgsvm3jqn5rk7zjzw4z8vhzyn0b.nar.xz';
const KEY_B = '19qxnpvfgx8v1v90qby44qgw8iwzfspmyjwpv4hb0bbh7swrgjk4.nar.zst';
const KEY_C = '18g790pah5xwvxjxygsy470ng3q1isrwcgfvy8qdbmf1653j49fc.nar';

let root: string;
let store: FilesystemNarStore;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'narwhal-fs-store-'));
  store = new FilesystemNarStore(root);
  await store.init();
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Writes a spool file in the store's spool directory, as a download would. */
async function spool(
  bytes: Buffer,
  name = `spool-${randomBytes(4).toString('hex')}.part`,
): Promise<string> {
  const path = join(store.spool.dir, name);
  await writeFile(path, bytes);
  return path;
}

/** Every regular file under `dir`, relative to it. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .sort();
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Same bytes (compared by length and hash: deep equality of large buffers is slow). */
function expectSameBytes(got: Buffer, want: Buffer): void {
  expect(got.length).toBe(want.length);
  expect(sha256(got)).toBe(sha256(want));
}

/**
 * Compiles the store (and its runtime imports) into `dir`, then, in a `node --expose-gc` child,
 * reads a stored object five times, opens an unrelated file after each read (it gets the
 * descriptor number the read just closed), collects garbage and reports which of those
 * descriptors were closed behind its back.
 */
async function runGcProbe(
  dir: string,
): Promise<{ warnings: string[]; badFds: number[]; reads: number }> {
  const out = join(dir, 'gc-probe');
  const src = join(__dirname, '..', '..');
  for (const file of [
    'common/errors.ts',
    'storage/object-keys.ts',
    'storage/spool-area.ts',
    'storage/filesystem/filesystem-nar-store.ts',
  ]) {
    const { code } = await transformFile(join(src, file), {
      jsc: { parser: { syntax: 'typescript' }, target: 'es2022' },
      module: { type: 'commonjs' },
    });
    const target = join(out, file.replace(/\.ts$/, '.js'));
    await mkdir(join(target, '..'), { recursive: true });
    await writeFile(target, code);
  }
  const script = `
    const fs = require('node:fs');
    const { FilesystemNarStore } = require('./storage/filesystem/filesystem-nar-store.js');
    const warnings = [];
    process.on('warning', (w) => warnings.push(w.message));
    (async () => {
      const store = new FilesystemNarStore(${JSON.stringify(join(out, 'root'))});
      await store.init();
      fs.writeFileSync(store.spool.dir + '/s.part', 'some nar bytes');
      await store.putFile(${JSON.stringify(KEY_A)}, store.spool.dir + '/s.part');
      fs.writeFileSync(${JSON.stringify(join(out, 'other'))}, 'unrelated');
      const fds = [];
      let reads = 0;
      for (let i = 0; i < 5; i++) {
        const s = await store.read(${JSON.stringify(KEY_A)});
        const closed = new Promise((r) => s.once('close', r));
        for await (const _ of s) reads += 0;
        await closed;
        reads++;
        fds.push(fs.openSync(${JSON.stringify(join(out, 'other'))}, 'r'));
      }
      for (let i = 0; i < 10; i++) {
        global.gc();
        await new Promise((r) => setTimeout(r, 20));
      }
      const badFds = fds.filter((fd) => { try { fs.fstatSync(fd); return false; } catch { return true; } });
      process.stdout.write(JSON.stringify({ warnings, badFds, reads }));
    })();
  `;
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ['--expose-gc', '--no-deprecation', '-e', script],
    {
      cwd: out,
    },
  );
  return JSON.parse(stdout) as { warnings: string[]; badFds: number[]; reads: number };
}

/** File descriptors of this process open on `path` (Linux /proc). */
function openFdsOf(path: string): string[] {
  return readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false;
    }
  });
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

describe('FilesystemNarStore layout', () => {
  it('keeps spools under tmp/ and objects sharded under nar/<k0>/<k0k1>/', () => {
    expect(store.spool.dir).toBe(join(root, 'tmp'));
    expect(store.pathOf(KEY_A)).toBe(join(root, 'nar', '1', '1d', KEY_A));
    expect(store.pathOf(KEY_B)).toBe(join(root, 'nar', '1', '19', KEY_B));
  });

  it('init creates both directories and is idempotent', async () => {
    expect((await stat(join(root, 'nar'))).isDirectory()).toBe(true);
    expect((await stat(join(root, 'tmp'))).isDirectory()).toBe(true);
    await expect(store.init()).resolves.toBeUndefined();
  });
});

describe('FilesystemNarStore.putFile', () => {
  it('moves the spool into its sharded path; nothing is visible under nar/ before the commit', async () => {
    const bytes = randomBytes(10_000);
    const path = await spool(bytes);
    const spoolInode = (await stat(path)).ino;

    expect(await filesUnder(join(root, 'nar'))).toEqual([]);
    expect(await store.stat(KEY_A)).toBeNull();
    expect(await collect(store.list())).toEqual([]);
    await expect(store.read(KEY_A)).rejects.toBeInstanceOf(NotFoundError);

    await store.putFile(KEY_A, path);

    // A rename, not a copy: the same inode, and the spool is gone.
    const target = store.pathOf(KEY_A);
    expect((await stat(target)).ino).toBe(spoolInode);
    await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await filesUnder(join(root, 'nar'))).toEqual([join('1', '1d', KEY_A)]);
    expect(await filesUnder(store.spool.dir)).toEqual([]);
    expectSameBytes(await readFile(target), bytes);
    expect(await store.stat(KEY_A)).toEqual({ size: bytes.length });
  });

  it('replaces an object stored under the same key', async () => {
    await store.putFile(KEY_A, await spool(Buffer.from('old contents')));
    await store.putFile(KEY_A, await spool(Buffer.from('new')));
    expect(await readAll(await store.read(KEY_A))).toEqual(Buffer.from('new'));
    expect(await store.stat(KEY_A)).toEqual({ size: 3 });
  });

  it('rejects a missing spool and stores nothing', async () => {
    await expect(
      store.putFile(KEY_A, join(store.spool.dir, 'never-written.part')),
    ).rejects.toMatchObject({
      code: 'ENOENT',
    });
    expect(await store.stat(KEY_A)).toBeNull();
    expect(await filesUnder(join(root, 'nar'))).toEqual([]);
  });

  it('commits a spool its writer already synced (synced: true), the same rename', async () => {
    const bytes = randomBytes(5_000);
    const path = await spool(bytes);
    const inode = (await stat(path)).ino;
    await store.putFile(KEY_A, path, { synced: true });
    expect((await stat(store.pathOf(KEY_A))).ino).toBe(inode);
    await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
    expectSameBytes(await readFile(store.pathOf(KEY_A)), bytes);
  });

  it('makes the fan-out directories again when they were removed after an earlier commit', async () => {
    await store.putFile(KEY_A, await spool(Buffer.from('first')));
    await rm(join(root, 'nar', '1'), { recursive: true });
    expect(await store.stat(KEY_A)).toBeNull();
    await store.putFile(KEY_A, await spool(Buffer.from('second')), { synced: true });
    expect(await readAll(await store.read(KEY_A))).toEqual(Buffer.from('second'));
  });

  it('rejects a missing spool also when told it is synced, and stores nothing', async () => {
    await expect(
      store.putFile(KEY_A, join(store.spool.dir, 'never-written.part'), { synced: true }),
    ).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await store.stat(KEY_A)).toBeNull();
    expect(await filesUnder(join(root, 'nar'))).toEqual([]);
  });

  it('stores an empty file', async () => {
    await store.putFile(KEY_C, await spool(Buffer.alloc(0)));
    expect(await store.stat(KEY_C)).toEqual({ size: 0 });
    expect(await readAll(await store.read(KEY_C))).toEqual(Buffer.alloc(0));
  });
});

describe('FilesystemNarStore.read', () => {
  const bytes = Buffer.from(Array.from({ length: 600_000 }, (_, i) => (i * 7) & 0xff));

  beforeEach(async () => {
    await store.putFile(KEY_A, await spool(bytes));
  });

  it('streams the whole object (larger than one read chunk)', async () => {
    expectSameBytes(await readAll(await store.read(KEY_A)), bytes);
  });

  it.each([
    [{ start: 0, end: 0 }, [0, 1]],
    [{ start: 2, end: 5 }, [2, 6]],
    [{ start: 100 }, [100, 600_000]],
    [{ start: 599_999 }, [599_999, 600_000]],
    [{ start: 300_000, end: 599_999 }, [300_000, 600_000]],
    [{ start: 1, end: 10_000_000 }, [1, 600_000]],
  ])('reads the byte range %j (end inclusive)', async (range, [from, to]) => {
    expectSameBytes(await readAll(await store.read(KEY_A, range)), bytes.subarray(from, to));
  });

  it.each([{ start: 10, end: 5 }, { start: -1 }, { start: 0.5 }])(
    'rejects the invalid range %j without leaking the open file',
    async (range) => {
      await expect(store.read(KEY_A, range)).rejects.toThrow();
      await new Promise((r) => setImmediate(r));
      expect(openFdsOf(store.pathOf(KEY_A))).toEqual([]);
    },
  );

  it('closes the file once a reader is done or destroyed', async () => {
    const whole = await store.read(KEY_A);
    const closed = new Promise((r) => whole.once('close', r));
    await readAll(whole);
    await closed;
    const abandoned = await store.read(KEY_A);
    const abandonedClosed = new Promise((r) => abandoned.once('close', r));
    abandoned.destroy();
    await abandonedClosed;
    expect(openFdsOf(store.pathOf(KEY_A))).toEqual([]);
  });

  it('rejects a missing object with NotFoundError', async () => {
    const err = await store.read(KEY_B).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect((err as Error).message).toContain(KEY_B);
  });

  it('serves several readers at once', async () => {
    const [a, b, c] = await Promise.all([
      store.read(KEY_A),
      store.read(KEY_A),
      store.read(KEY_A, { start: 10, end: 19 }),
    ]);
    const [ra, rb, rc] = await Promise.all([readAll(a), readAll(b), readAll(c)]);
    expectSameBytes(ra, bytes);
    expectSameBytes(rb, bytes);
    expect(rc).toEqual(bytes.subarray(10, 20));
  });

  it('leaves no file handle for the garbage collector to close', async () => {
    // A FileHandle that is never closed gets its descriptor number closed when it is collected, even
    // if the stream closed that descriptor long ago and the number now belongs to another file.
    // vitest's workers keep such handles reachable, so this runs the real store in a plain
    // `node --expose-gc` child, compiled with the project's SWC.
    const out = await runGcProbe(root);
    expect(out.warnings.filter((m) => /garbage collection/.test(m))).toEqual([]);
    expect(out.badFds).toEqual([]);
    expect(out.reads).toBe(5);
  });
});

describe('FilesystemNarStore.delete', () => {
  it('removes an object and is idempotent', async () => {
    await store.putFile(KEY_A, await spool(Buffer.from('x')));
    await store.putFile(KEY_B, await spool(Buffer.from('y')));
    await store.delete(KEY_A);
    expect(await store.stat(KEY_A)).toBeNull();
    await expect(store.read(KEY_A)).rejects.toBeInstanceOf(NotFoundError);
    await expect(store.delete(KEY_A)).resolves.toBeUndefined();
    await expect(store.delete(KEY_C)).resolves.toBeUndefined();
    expect(await store.stat(KEY_B)).toEqual({ size: 1 });
  });
});

describe('FilesystemNarStore.list', () => {
  it('yields every stored key with its size, and nothing from the spool directory', async () => {
    const keys = [
      KEY_A,
      KEY_B,
      KEY_C,
      '1dj881h51cx0jzblhskrwhgymdgsvm3jqn5rk7zjzw4z8vhzyn0b.nar',
      'zz00000000000000000000000000000000000000000000000000.nar.br',
    ];
    for (const [i, key] of keys.entries()) {
      await store.putFile(key, await spool(randomBytes(100 + i * 11)));
    }
    await spool(Buffer.from('in progress'), 'pending.part');
    const listed = await collect(store.list());
    expect(listed.sort((a, b) => a.key.localeCompare(b.key))).toEqual(
      keys
        .map((key, i) => ({ key, size: 100 + i * 11 }))
        .sort((a, b) => a.key.localeCompare(b.key)),
    );
  });

  it('yields nothing for a store that was never initialised', async () => {
    const fresh = new FilesystemNarStore(join(root, 'does-not-exist'));
    expect(await collect(fresh.list())).toEqual([]);
  });
});

describe('FilesystemNarStore keys', () => {
  const invalid = [
    '../x',
    'a/b',
    '../../../../etc/passwd',
    '',
    '.nar',
    'short.nar',
    'UPPERCASE000.nar',
    '1dj881h51cx0jzblhskrwhgymdgsvm3jqn5rk7zjzw4z8vhzyn0b',
    '1dj881h51cx0jzblhskrwhgymdgsvm3jqn5rk7zjzw4z8vhzyn0b.nar.xz/..',
    '1dj881h51cx0jzblhskrwhgymdgsvm3jqn5rk7zjzw4z8vhzyn0b.nar/../../x.nar',
    '1dj881h51cx0jzblhskrwhgymdgsvm3jqn5rk7zjzw4z8vhzyn0b.nar.xz\n',
    '1dj881h51cx0jzblhskrwhgymdgsvm3jqn5rk7zjzw4z8vhzyn0b.narinfo',
  ];

  it.each(invalid)('rejects %j everywhere', async (key) => {
    expect(() => store.pathOf(key)).toThrow(/invalid storage key/);
    await expect(store.stat(key)).rejects.toThrow(/invalid storage key/);
    await expect(store.read(key)).rejects.toThrow(/invalid storage key/);
    await expect(store.delete(key)).rejects.toThrow(/invalid storage key/);
    const path = await spool(Buffer.from('data'));
    await expect(store.putFile(key, path)).rejects.toThrow(/invalid storage key/);
    // Nothing was moved anywhere.
    expect(await stat(path)).toBeTruthy();
    expect(await filesUnder(join(root, 'nar'))).toEqual([]);
  });
});

describe('FilesystemNarStore.checkWritable', () => {
  it('resolves for an initialised store and leaves no probe behind', async () => {
    await expect(store.checkWritable()).resolves.toBeUndefined();
    expect(await filesUnder(store.spool.dir)).toEqual([]);
  });

  it('rejects when the spool directory is missing', async () => {
    const fresh = new FilesystemNarStore(join(root, 'not-initialised'));
    await expect(fresh.checkWritable()).rejects.toThrow();
  });

  it('leaves no probe behind when the disk is full (the file is created, the write fails)', async () => {
    // /dev/full opens fine and fails every write with ENOSPC, as a full disk does.
    await symlink('/dev/full', join(store.spool.dir, `.probe-${process.pid}`));
    await expect(store.checkWritable()).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(await readdir(store.spool.dir)).toEqual([]);
  });

  it('rejects when the spool directory cannot hold files', async () => {
    const broken = join(root, 'broken');
    await mkdir(broken);
    await writeFile(join(broken, 'tmp'), 'a file where the spool directory should be');
    await expect(new FilesystemNarStore(broken).checkWritable()).rejects.toMatchObject({
      code: 'ENOTDIR',
    });
  });
});
