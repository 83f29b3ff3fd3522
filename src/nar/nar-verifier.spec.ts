import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { xzBomb, zstdBomb } from '../../test/support/bombs';
import { nixSha256 } from '../../test/support/hash';
import { withWrongCrc64 } from '../../test/support/xz';
import { DownloadFailedError, NarMismatchError } from '../common/errors';
import type { Compression } from '../nix/compression';
import { NarVerifier, type NarExpectations } from './nar-verifier';

/**
 * Decoders on the test's own thread, as in the verifier threads: an xz decoder on lzma-native's
 * threads that a test leaves mid-bomb could still be decoding when the test process ends, which
 * lzma-native answers by aborting the process. The asynchronous decoders are covered in
 * decompress.spec.ts.
 */
const ON_THIS_THREAD = { onThisThread: true };

/** Stand-in NAR content: compressible but not trivially (lines of numbers and a pseudo-random tail). */
function makeNar(size: number, seed = 1): Buffer {
  const lines: string[] = [];
  let x = seed;
  let length = 0;
  while (length < size) {
    x = (x * 1103515245 + 12345) >>> 0;
    const line = `${lines.length} ${x.toString(36)}\n`;
    lines.push(line);
    length += line.length;
  }
  return Buffer.from(lines.join('')).subarray(0, size);
}

/** Bytes no compressor shrinks (a sha256 chain), deterministic. */
function incompressible(size: number): Buffer {
  const blocks: Buffer[] = [];
  let block = createHash('sha256').update('seed').digest();
  for (let n = 0; n < size; n += block.length) {
    blocks.push(block);
    block = createHash('sha256').update(block).digest();
  }
  return Buffer.concat(blocks).subarray(0, size);
}

/** Compresses with the real CLI tools, as an upstream cache would have. */
function compress(nar: Buffer, c: Compression): Buffer {
  switch (c) {
    case 'xz':
      return execFileSync('xz', ['-c', '-6'], { input: nar, maxBuffer: 64 << 20 });
    case 'zstd':
      return execFileSync('zstd', ['-c', '-q', '-3'], { input: nar, maxBuffer: 64 << 20 });
    case 'gzip':
      return gzipSync(nar);
    case 'none':
      return Buffer.from(nar);
    default:
      throw new Error(`no compressor for ${c} in this test`);
  }
}

interface Sample {
  nar: Buffer;
  file: Buffer;
  expect: Required<NarExpectations>;
}

function sample(c: Compression, size = 200_000, seed = 1): Sample {
  const nar = makeNar(size, seed);
  const file = compress(nar, c);
  return {
    nar,
    file,
    expect: {
      compression: c,
      fileHash: nixSha256(file),
      fileSize: file.length,
      narHash: nixSha256(nar),
      narSize: nar.length,
    },
  };
}

function chunks(bytes: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, i + size));
  return out;
}

/** Feeds `bytes` in chunks and finishes; resolves or rejects like a download would. */
async function verify(
  expect: NarExpectations,
  bytes: Buffer,
  chunkSize = 4096,
): Promise<NarVerifier> {
  const v = new NarVerifier(expect, ON_THIS_THREAD);
  try {
    for (const c of chunks(bytes, chunkSize)) await v.update(c);
    await v.finish();
    return v;
  } catch (e) {
    v.destroy();
    throw e;
  }
}

async function failure(p: Promise<unknown>): Promise<DownloadFailedError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(DownloadFailedError);
  // Told apart from a broken transfer, for the status page's recent failures.
  expect(e).toBeInstanceOf(NarMismatchError);
  return e as DownloadFailedError;
}

const xz = sample('xz');
const zstd = sample('zstd');
const gzip = sample('gzip', 50_000);
const plain = sample('none', 50_000);

describe('NarVerifier accepts correct bytes', () => {
  it.each([
    ['xz', xz],
    ['zstd', zstd],
    ['gzip', gzip],
    ['none', plain],
  ] as const)('%s with FileHash, FileSize, NarHash and NarSize', async (_name, s) => {
    expect(s.file.length).toBeGreaterThan(0);
    const v = await verify(s.expect, s.file);
    expect(v.bytes).toBe(s.file.length);
    expect(v.checksContent).toBe(true);
  });

  it.each([1, 7, 65_536, 10_000_000])('xz fed in chunks of %d bytes', async (size) => {
    const small = size === 1 ? sample('xz', 5_000, 2) : xz;
    await expect(verify(small.expect, small.file, size)).resolves.toBeInstanceOf(NarVerifier);
  });

  it('with only FileHash and FileSize (no NarHash)', async () => {
    const { fileHash, fileSize, compression } = xz.expect;
    const v = await verify({ compression, fileHash, fileSize }, xz.file);
    expect(v.checksContent).toBe(true);
  });

  it('with only NarHash and NarSize (attic, nix-serve)', async () => {
    const { narHash, narSize, compression } = zstd.expect;
    const v = await verify({ compression, narHash, narSize }, zstd.file);
    expect(v.checksContent).toBe(true);
  });

  it('with only NarHash known (no NarSize, no FileHash)', async () => {
    const { narHash, compression } = xz.expect;
    const v = await verify({ compression, narHash }, xz.file);
    expect(v.checksContent).toBe(true);
  });

  it('xz whose own CRC64 alone is wrong, when NarHash is checked (the check is redundant then)', async () => {
    const { narHash, narSize, compression } = xz.expect;
    const v = await verify({ compression, narHash, narSize }, withWrongCrc64(xz.file));
    expect(v.checksContent).toBe(true);
  });

  it('with nothing known but the compression, checking nothing', async () => {
    const v = await verify({ compression: 'xz' }, Buffer.from('anything at all'));
    expect(v.checksContent).toBe(false);
    expect(v.bytes).toBe(15);
  });

  it('an empty NAR file when FileSize is 0 and nothing else is known', async () => {
    await expect(
      verify({ compression: 'none', fileSize: 0 }, Buffer.alloc(0)),
    ).resolves.toBeInstanceOf(NarVerifier);
  });
});

describe('NarVerifier rejects', () => {
  it('a wrong FileHash', async () => {
    const other = sample('xz', 200_000, 99);
    const e = await failure(verify({ ...xz.expect, fileHash: other.expect.fileHash }, xz.file));
    expect(e.message).toContain('FileHash');
    expect(e.message).toContain(xz.expect.fileHash);
  });

  it('bytes that differ in one place from what FileHash covers', async () => {
    const corrupt = Buffer.from(xz.file);
    corrupt[corrupt.length >> 1] ^= 0x01;
    const { compression, fileHash, fileSize } = xz.expect;
    const e = await failure(verify({ compression, fileHash, fileSize }, corrupt));
    expect(e.message).toContain('FileHash');
  });

  it('more bytes than FileSize, as soon as they arrive', async () => {
    const v = new NarVerifier({ ...xz.expect, fileSize: xz.file.length - 1 }, ON_THIS_THREAD);
    const parts = chunks(xz.file, 1000);
    for (const c of parts.slice(0, -1)) await v.update(c);
    const e = await failure(v.update(parts[parts.length - 1]));
    expect(e.message).toContain('longer than its FileSize');
    v.destroy();
  });

  it('fewer bytes than FileSize', async () => {
    const { compression, fileHash, fileSize } = xz.expect;
    const e = await failure(
      verify({ compression, fileHash, fileSize }, xz.file.subarray(0, xz.file.length - 10)),
    );
    expect(e.message).toContain(`FileSize says ${xz.file.length}`);
  });

  it('a FileSize that is too small even with no hash known', async () => {
    await failure(verify({ compression: 'none', fileSize: 10 }, Buffer.alloc(11)));
    await failure(verify({ compression: 'none', fileSize: 12 }, Buffer.alloc(11)));
  });

  it('a wrong NarHash when only NarHash and NarSize are known', async () => {
    const other = sample('xz', 200_000, 42);
    const e = await failure(
      verify(
        { compression: 'xz', narHash: other.expect.narHash, narSize: xz.expect.narSize },
        xz.file,
      ),
    );
    expect(e.message).toContain('NarHash');
  });

  it('a wrong NarHash even when FileHash matches', async () => {
    const other = sample('zstd', 200_000, 42);
    const e = await failure(verify({ ...zstd.expect, narHash: other.expect.narHash }, zstd.file));
    expect(e.message).toContain('NarHash');
  });

  it('a wrong NarSize', async () => {
    const e = await failure(verify({ ...xz.expect, narSize: xz.expect.narSize + 1 }, xz.file));
    expect(e.message).toContain('NarSize');
  });

  it('NAR content that differs while FileHash is unknown', async () => {
    // Same compressor, other content: decodes fine, hashes differently.
    const other = sample('zstd', 200_000, 7);
    const e = await failure(
      verify(
        { compression: 'zstd', narHash: zstd.expect.narHash, narSize: zstd.expect.narSize },
        other.file,
      ),
    );
    expect(e.message).toMatch(/NarHash|NarSize/);
  });

  it.each([
    ['xz', 'random bytes', () => Buffer.from(makeNar(5_000, 3).map((b) => b ^ 0x5a))],
    ['zstd', 'random bytes', () => Buffer.from(makeNar(5_000, 3).map((b) => b ^ 0x5a))],
    ['gzip', 'random bytes', () => Buffer.from(makeNar(5_000, 3).map((b) => b ^ 0x5a))],
    ['xz', 'zstd data', () => zstd.file],
    ['zstd', 'xz data', () => xz.file],
    ['xz', 'a truncated stream', () => xz.file.subarray(0, xz.file.length >> 1)],
    ['zstd', 'a truncated stream', () => zstd.file.subarray(0, zstd.file.length >> 1)],
    ['zstd', 'nothing', () => Buffer.alloc(0)],
  ] as const)(
    '%s that is %s (undecodable, only NarHash known)',
    async (compression, _what, bytes) => {
      const data = bytes();
      const e = await failure(
        verify({ compression, narHash: xz.expect.narHash, narSize: xz.expect.narSize }, data),
      );
      expect(e.message).toMatch(/decompress|NarHash|NarSize/);
    },
  );

  it('xz data whose changed byte xz itself no longer notices (its CRC64 is skipped)', async () => {
    // Incompressible bytes: xz stores them as they are, so a changed one still decodes.
    const nar = incompressible(100_000);
    const file = compress(nar, 'xz');
    const at = file.indexOf(nar.subarray(50_000, 50_016));
    expect(at).toBeGreaterThan(0);
    const changed = Buffer.from(file);
    changed[at] ^= 0x01;
    const e = await failure(
      verify({ compression: 'xz', narHash: nixSha256(nar), narSize: nar.length }, changed),
    );
    expect(e.message).toMatch(/NarHash/);
  });

  it('undecodable data says so', async () => {
    const garbage = Buffer.from(makeNar(5_000, 3).map((b) => b ^ 0x5a));
    const e = await failure(
      verify(
        { compression: 'xz', narHash: xz.expect.narHash, narSize: xz.expect.narSize },
        garbage,
      ),
    );
    expect(e.message).toContain('does not decompress as xz');
  });
});

describe('NarVerifier.releasesChunks', () => {
  /** Feeds `bytes` through one buffer, refilled (and the rest scribbled over) after every update. */
  async function verifyThroughOneBuffer(expect: NarExpectations, bytes: Buffer, size = 65_536) {
    const v = new NarVerifier(expect, ON_THIS_THREAD);
    const buffer = Buffer.alloc(size);
    try {
      for (let offset = 0; offset < bytes.length; offset += size) {
        const n = bytes.copy(buffer, 0, offset, offset + size);
        await v.update(buffer.subarray(0, n));
        buffer.fill(0x5a); // what the next read would do to bytes a decoder still held
      }
      await v.finish();
    } finally {
      v.destroy();
    }
  }

  it.each([
    ['xz', xz],
    ['gzip', gzip],
  ] as const)('%s: a buffer refilled after each update still verifies', async (_name, s) => {
    expect(new NarVerifier(s.expect, ON_THIS_THREAD).releasesChunks).toBe(true);
    await expect(verifyThroughOneBuffer(s.expect, s.file, 4096)).resolves.toBeUndefined();
    await expect(verifyThroughOneBuffer(s.expect, s.file)).resolves.toBeUndefined();
  });

  it('xz: a bad byte fed through the reused buffer is still found', async () => {
    const bad = Buffer.from(xz.file);
    bad[Math.floor(bad.length / 2)] ^= 1;
    await failure(verifyThroughOneBuffer({ ...xz.expect, fileHash: undefined }, bad));
  });

  it('is true without a decoder, false for decoders that keep their input', () => {
    const hashOnly = { ...xz.expect, narHash: undefined, narSize: undefined };
    expect(new NarVerifier(hashOnly, ON_THIS_THREAD).releasesChunks).toBe(true);
    expect(new NarVerifier(zstd.expect, ON_THIS_THREAD).releasesChunks).toBe(false);
    expect(new NarVerifier(plain.expect, ON_THIS_THREAD).releasesChunks).toBe(false);
    expect(new NarVerifier(xz.expect).releasesChunks).toBe(false); // xz on lzma-native's threads
  });
});

describe('NarVerifier.checksContent', () => {
  it('is false for a compression it cannot decode and no FileHash', () => {
    const v = new NarVerifier({ compression: 'bzip2', narHash: xz.expect.narHash, narSize: 1 });
    expect(v.checksContent).toBe(false);
    v.destroy();
  });

  it('is true for a compression it cannot decode when FileHash is known', () => {
    const v = new NarVerifier({ compression: 'lz4', fileHash: xz.expect.fileHash });
    expect(v.checksContent).toBe(true);
    v.destroy();
  });
});

describe('NarVerifier stops decompression bombs', () => {
  it.each([
    ['zstd', () => zstdBomb(256 * 1024 * 1024)],
    ['xz', () => xzBomb(64 * 1024 * 1024)],
  ] as const)(
    'fails a %s NAR once it decodes past NarSize, instead of decoding it to the end',
    async (compression, make) => {
      const bomb = make();
      const v = new NarVerifier(
        {
          compression,
          narHash: nixSha256(Buffer.from('small')),
          narSize: 1024 * 1024,
        },
        ON_THIS_THREAD,
      );
      const error = await failure(
        (async () => {
          for (const c of chunks(bomb, 4096)) await v.update(c);
          await v.finish();
        })(),
      );
      v.destroy();
      expect(error).toBeInstanceOf(NarMismatchError);
      expect(error.message).toContain('more than its NarSize 1048576');
      // Stopped within a decoder slice or two of the limit, not after tens of MiB.
      expect(v.decodedBytes).toBeGreaterThan(1024 * 1024);
      expect(v.decodedBytes).toBeLessThan(32 * 1024 * 1024);
    },
  );
});
