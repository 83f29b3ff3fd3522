import { readFileSync } from 'node:fs';
import { appendFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compress } from 'lzma-native';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { zstdBomb } from '../../../test/support/bombs';
import { nixSha256 } from '../../../test/support/hash';
import { makeSample } from '../../../test/support/nar-spool-kit';
import { DownloadFailedError } from '../../common/errors';
import { NarMismatchError } from '../../common/errors';
import { VerifierPool } from './verifier-pool';
import { eventually } from '../../../test/support/wait';

// Checks run in real worker threads (the build's dist/nar/verification/verifier-worker.js).

const SAMPLE = makeSample(300_000, 11);
const OTHER = makeSample(300_000, 12);

let dir: string;
let pool: VerifierPool;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'narwhal-verifier-'));
  pool = new VerifierPool(2);
});

afterAll(async () => {
  await pool.onApplicationShutdown();
  await rm(dir, { recursive: true, force: true });
});

/** Writes `bytes` to a new file in pieces, telling `grew` after each, like a download's spool. */
async function spoolInPieces(
  path: string,
  bytes: Buffer,
  grew: (size: number) => void,
): Promise<void> {
  await writeFile(path, '');
  for (let off = 0; off < bytes.length; off += 50_000) {
    await appendFile(path, bytes.subarray(off, off + 50_000));
    grew(Math.min(bytes.length, off + 50_000));
  }
}

function outcome(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => 'verified',
    (e: unknown) => e,
  );
}

describe('VerifierPool.checkFile (a spool that grows)', () => {
  it('verifies a spool written in pieces', async () => {
    const path = join(dir, 'good.part');
    const check = pool.checkFile(path, SAMPLE.expect);
    await spoolInPieces(path, SAMPLE.file, (n) => check.grew(n));
    await expect(check.finish(SAMPLE.file.length)).resolves.toBeUndefined();
  });

  it('rejects a spool whose hashes are not the expected ones, with NarMismatchError', async () => {
    const path = join(dir, 'wrong.part');
    const check = pool.checkFile(path, { ...OTHER.expect, fileSize: SAMPLE.file.length });
    await spoolInPieces(path, SAMPLE.file, (n) => check.grew(n));
    const result = await outcome(check.finish(SAMPLE.file.length));
    expect(result).toBeInstanceOf(NarMismatchError);
  });

  it('reports a decompression bomb through `failed` before the spool is complete', async () => {
    const bomb = zstdBomb(512 * 1024 * 1024);
    const path = join(dir, 'bomb.part');
    const check = pool.checkFile(path, {
      compression: 'zstd',
      narHash: nixSha256(Buffer.from('tiny')),
      narSize: 1024 * 1024,
    });
    await writeFile(path, bomb);
    check.grew(bomb.length); // never finished: the failure comes on its own
    const failure = await outcome(check.failed);
    expect(failure).toBeInstanceOf(NarMismatchError);
    expect((failure as Error).message).toContain('more than its NarSize');
  });

  it('settles an abandoned check as failed and keeps serving other checks', async () => {
    const check = pool.checkFile(join(dir, 'never-written.part'), SAMPLE.expect);
    check.abandon();
    expect(await outcome(check.finish(0))).toBeInstanceOf(DownloadFailedError);
    const path = join(dir, 'after.part');
    const next = pool.checkFile(path, SAMPLE.expect);
    await spoolInPieces(path, SAMPLE.file, (n) => next.grew(n));
    await expect(next.finish(SAMPLE.file.length)).resolves.toBeUndefined();
  });
});

describe('VerifierPool: idle threads', () => {
  it('ends a thread that has had nothing to check for a while, and starts one again for the next check', async () => {
    const idlePool = new VerifierPool(1, 50);
    try {
      const first = join(dir, 'idle-1.part');
      const check = idlePool.checkFile(first, SAMPLE.expect);
      expect(idlePool.threads).toBe(1);
      await spoolInPieces(first, SAMPLE.file, (n) => check.grew(n));
      await check.finish(SAMPLE.file.length);
      await eventually(() => idlePool.threads === 0, 10_000, 'the idle thread ended');

      const second = join(dir, 'idle-2.part');
      const again = idlePool.checkFile(second, SAMPLE.expect);
      expect(idlePool.threads).toBe(1);
      await spoolInPieces(second, SAMPLE.file, (n) => again.grew(n));
      await expect(again.finish(SAMPLE.file.length)).resolves.toBeUndefined();
    } finally {
      await idlePool.onApplicationShutdown();
    }
  });
});

describe('VerifierPool.checkStream (chunks handed over)', () => {
  it('verifies chunks written with flow control, and rejects wrong ones', async () => {
    const good = pool.checkStream(SAMPLE.expect);
    for (let off = 0; off < SAMPLE.file.length; off += 7_000) {
      await good.write(SAMPLE.file.subarray(off, off + 7_000));
    }
    await expect(good.finish(SAMPLE.file.length)).resolves.toBeUndefined();

    const bad = pool.checkStream({ ...OTHER.expect, fileSize: SAMPLE.file.length });
    for (let off = 0; off < SAMPLE.file.length; off += 7_000) {
      await bad.write(SAMPLE.file.subarray(off, off + 7_000));
    }
    expect(await outcome(bad.finish(SAMPLE.file.length))).toBeInstanceOf(NarMismatchError);
  });

  it('refuses new checks once shut down', async () => {
    const closed = new VerifierPool(1);
    await closed.onApplicationShutdown();
    expect(() => closed.checkStream(SAMPLE.expect)).toThrow(DownloadFailedError);
  });
});

describe('VerifierPool.listStream (a listing made in the thread)', () => {
  it('lists a compressed NAR handed over in chunks, and fails on what is not a NAR', async () => {
    const leaf = readFileSync(
      join(__dirname, '..', '..', 'nix', '__fixtures__', 'nar', 'leaf.nar'),
    );
    const xz = await compress(leaf, { preset: 1 });
    const lister = pool.listStream('xz');
    for (let off = 0; off < xz.length; off += 100) await lister.write(xz.subarray(off, off + 100));
    expect(JSON.parse(await lister.finish(xz.length))).toEqual({
      version: 1,
      root: { type: 'regular', size: 'hello-narwhal\n'.length, narOffset: 96 },
    });

    const notANar = pool.listStream('none');
    await notANar.write(Buffer.from('this is not a NAR at all'));
    expect(await outcome(notANar.finish(24))).toBeInstanceOf(Error);
  });
});
