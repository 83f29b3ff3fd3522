import { readFileSync } from 'node:fs';
import { appendFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compress } from 'lzma-native';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { xzBomb, zstdBomb } from '../../../test/support/bombs';
import { nixSha256 } from '../../../test/support/hash';
import { makeSample } from '../../../test/support/nar-spool-kit';
import { DownloadFailedError } from '../../common/errors';
import { NarMismatchError, NarTooLargeError } from '../../common/errors';
import { SMALL_NAR_BYTES, SMALL_SPOOL_BYTES, VerifierPool } from './verifier-pool';
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
  grew: (size: number, chunk: Buffer) => void,
): Promise<void> {
  await writeFile(path, '');
  for (let off = 0; off < bytes.length; off += 50_000) {
    const chunk = bytes.subarray(off, off + 50_000);
    await appendFile(path, chunk);
    grew(off + chunk.length, chunk);
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
    await spoolInPieces(path, SAMPLE.file, (n, c) => check.grew(n, c));
    await expect(check.finish(SAMPLE.file.length)).resolves.toBeUndefined();
  });

  it('rejects a spool whose hashes are not the expected ones, with NarMismatchError', async () => {
    const path = join(dir, 'wrong.part');
    const check = pool.checkFile(path, { ...OTHER.expect, fileSize: SAMPLE.file.length });
    await spoolInPieces(path, SAMPLE.file, (n, c) => check.grew(n, c));
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
    check.grew(bomb.length, bomb); // never finished: the failure comes on its own
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
    await spoolInPieces(path, SAMPLE.file, (n, c) => next.grew(n, c));
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
      await spoolInPieces(first, SAMPLE.file, (n, c) => check.grew(n, c));
      await check.finish(SAMPLE.file.length);
      await eventually(() => idlePool.threads === 0, 10_000, 'the idle thread ended');

      const second = join(dir, 'idle-2.part');
      const again = idlePool.checkFile(second, SAMPLE.expect);
      expect(idlePool.threads).toBe(1);
      await spoolInPieces(second, SAMPLE.file, (n, c) => again.grew(n, c));
      await expect(again.finish(SAMPLE.file.length)).resolves.toBeUndefined();
    } finally {
      await idlePool.onApplicationShutdown();
    }
  });
});

describe('VerifierPool.checkSpool (small spools on the calling thread)', () => {
  const SMALL = makeSample(20_000, 13);

  /** Feeds `bytes` to `check` in pieces, as a spool does, without a file. */
  function feed(check: { grew(size: number, chunk: Buffer): void }, bytes: Buffer): void {
    for (let off = 0; off < bytes.length; off += 1_000) {
      const chunk = bytes.subarray(off, off + 1_000);
      check.grew(off + chunk.length, chunk);
    }
  }

  it('checks a small spool without a thread and without reading the file', async () => {
    const fresh = new VerifierPool(1);
    try {
      expect(SMALL.file.length).toBeLessThanOrEqual(SMALL_SPOOL_BYTES);
      const check = fresh.checkSpool(
        join(dir, 'never-written.part'),
        SMALL.expect,
        SMALL.file.length,
      );
      feed(check, SMALL.file);
      await expect(check.finish(SMALL.file.length)).resolves.toBeUndefined();
      expect(fresh.threads).toBe(0);
    } finally {
      await fresh.onApplicationShutdown();
    }
  });

  it('rejects wrong bytes, a wrong FileSize and a short body as a mismatch', async () => {
    const other = makeSample(20_000, 14);
    const wrong = pool.checkSpool('unused', SMALL.expect, other.file.length);
    feed(wrong, other.file);
    expect(await outcome(wrong.finish(other.file.length))).toBeInstanceOf(NarMismatchError);

    const short = pool.checkSpool('unused', SMALL.expect, SMALL.file.length);
    feed(short, SMALL.file.subarray(0, 5_000));
    expect(await outcome(short.finish(5_000))).toBeInstanceOf(NarMismatchError);
  });

  it('stops a small body that decompresses past NarSize at once (a bomb), before the end', async () => {
    const bomb = xzBomb(64 * 1024 * 1024);
    expect(bomb.length).toBeLessThanOrEqual(SMALL_SPOOL_BYTES);
    const check = pool.checkSpool(
      'unused',
      {
        compression: 'xz',
        narHash: nixSha256(Buffer.from('tiny')),
        narSize: 4096,
      },
      bomb.length,
    );
    check.grew(bomb.length, bomb); // never finished: the failure comes on its own
    expect(await outcome(check.failed)).toBeInstanceOf(NarTooLargeError);
  });

  it('an abandoned check never resolves as verified', async () => {
    const check = pool.checkSpool('unused', SMALL.expect, SMALL.file.length);
    feed(check, SMALL.file.subarray(0, 4_000));
    check.abandon();
    expect(await outcome(check.finish(SMALL.file.length))).toBeInstanceOf(DownloadFailedError);
  });

  it('leaves larger spools, unknown lengths and large NARs to a thread', async () => {
    const fresh = new VerifierPool(1);
    try {
      const big = { ...SMALL.expect, narSize: SMALL_NAR_BYTES + 1 };
      const cases: [typeof SMALL.expect, number | undefined][] = [
        [SMALL.expect, SMALL_SPOOL_BYTES + 1],
        [SMALL.expect, undefined],
        [big, SMALL.file.length],
      ];
      for (const [expectation, length] of cases) {
        fresh.checkSpool(join(dir, 'never-written.part'), expectation, length).abandon();
        expect(fresh.threads).toBe(1);
      }
    } finally {
      await fresh.onApplicationShutdown();
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
