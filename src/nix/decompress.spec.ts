import { createHash } from 'node:crypto';
import { Readable, Transform } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import * as zlib from 'node:zlib';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { NIX_NARS, STORE_DIR, fixtureBytes, fixtureText, seqText } from './__fixtures__/vectors';
import { type Compression } from './compression';
import { asyncXzIdle, canDecompress, createNarDecompressor } from './decompress';
import { parseNarInfo } from './narinfo';
import { sha256Nix32 } from './hash';
import { withWrongCrc64 } from '../../test/support/xz';

/** Feeds `input` in `chunkSize` pieces through a fresh decoder and collects the output. */
async function decode(
  c: Compression,
  input: Buffer,
  chunkSize = 4096,
  onThisThread = false,
  outputHashed = false,
): Promise<Buffer> {
  const decoder = createNarDecompressor(c, { onThisThread, outputHashed });
  if (decoder === null) throw new Error(`no decoder for ${c}`);
  const pieces: Buffer[] = [];
  for (let i = 0; i < input.length; i += chunkSize) pieces.push(input.subarray(i, i + chunkSize));
  const out: Buffer[] = [];
  await pipeline(Readable.from(pieces), decoder, async (source: AsyncIterable<Buffer>) => {
    for await (const chunk of source) out.push(chunk);
  });
  return Buffer.concat(out);
}

function sha256(b: Buffer): string {
  return `sha256:${sha256Nix32(createHash('sha256').update(b).digest())}`;
}

describe('createNarDecompressor', () => {
  it('returns a Transform for what it decodes and null for the rest', () => {
    for (const c of ['none', 'xz', 'zstd', 'br', 'gzip'] as const) {
      expect(createNarDecompressor(c)).toBeInstanceOf(Transform);
      expect(canDecompress(c)).toBe(true);
    }
    for (const c of ['bzip2', 'lz4', 'lzip'] as const) {
      expect(createNarDecompressor(c)).toBeNull();
      expect(canDecompress(c)).toBe(false);
    }
  });

  it('passes uncompressed NARs through', async () => {
    const nar = fixtureBytes('nar/leaf.nar');
    expect(await decode('none', nar, 7)).toEqual(nar);
  });

  describe.each(NIX_NARS)('$nar, written by Nix 2.8', ({ nar, narinfo }) => {
    const info = parseNarInfo(fixtureText(narinfo), { storeDir: STORE_DIR });
    const file = fixtureBytes(nar);

    it('is the file its narinfo describes', () => {
      expect(sha256(file)).toBe(info.fileHash);
      expect(file.length).toBe(info.fileSize);
    });

    it.each([1, 13, 4096, 1 << 20])(
      'decodes to the NarHash when fed %i bytes at a time',
      async (size) => {
        const out = await decode(info.compression, file, size);
        expect(out.length).toBe(info.narSize);
        expect(sha256(out)).toBe(info.narHash);
      },
    );

    it('decodes to the NarHash on the calling thread too (as verifier threads do)', async () => {
      const out = await decode(info.compression, file, 4096, true);
      expect(out.length).toBe(info.narSize);
      expect(sha256(out)).toBe(info.narHash);
    });
  });

  describe.each([
    ['xz', 'cli/seq.txt.xz'],
    ['zstd', 'cli/seq.txt.zst'],
    ['gzip', 'cli/seq.txt.gz'],
  ] as const)('%s data made by the CLI tool', (c, file) => {
    it.each([1, 100, 65536])('decodes `seq 1 10000` fed %i bytes at a time', async (size) => {
      expect((await decode(c, fixtureBytes(file), size)).toString('utf8')).toBe(seqText());
    });
  });

  it.each([
    ['xz', 'cli/hello-world.concat.xz'],
    ['zstd', 'cli/hello-world.concat.zst'],
    ['gzip', 'cli/hello-world.concat.gz'],
  ] as const)('decodes concatenated %s streams, as Nix does', async (c, file) => {
    expect((await decode(c, fixtureBytes(file), 5)).toString('utf8')).toBe('hello world\n');
  });

  describe("xz on the calling thread (the native coder without lzma-native's stream)", () => {
    it.each([1, 100, 4096, 65536, 1 << 20])(
      'decodes `seq 1 10000` fed %i bytes at a time',
      async (size) => {
        const out = await decode('xz', fixtureBytes('cli/seq.txt.xz'), size, true);
        expect(out.toString('utf8')).toBe(seqText());
      },
    );

    it.each([1, 5, 4096])('decodes concatenated streams fed %i bytes at a time', async (size) => {
      const out = await decode('xz', fixtureBytes('cli/hello-world.concat.xz'), size, true);
      expect(out.toString('utf8')).toBe('hello world\n');
    });

    it('decodes one chunk larger than a slice whose output outgrows the reader (backpressure)', async () => {
      const input = fixtureBytes('cli/zeros-64MiB.xz');
      const decoder = createNarDecompressor('xz', { onThisThread: true })!;
      decoder.end(input); // one write: every slice of it waits for the reader in turn
      let total = 0;
      let maxBuffered = 0;
      for await (const chunk of decoder as AsyncIterable<Buffer>) {
        maxBuffered = Math.max(maxBuffered, decoder.readableLength);
        if (chunk.some((b) => b !== 0)) throw new Error('non-zero output');
        total += chunk.length;
      }
      expect(total).toBe(64 * 1024 * 1024);
      expect(maxBuffered).toBeLessThanOrEqual(8 * 1024 * 1024);
    }, 30_000);
  });
});

describe("xz's own integrity check (CRC64)", () => {
  it.each([false, true])(
    'fails a wrong CRC64, unless the caller hashes the output (on the calling thread: %s)',
    async (onThisThread) => {
      const wrong = withWrongCrc64(fixtureBytes('cli/seq.txt.xz'));
      await expect(decode('xz', wrong, 4096, onThisThread)).rejects.toThrow();
      const out = await decode('xz', wrong, 4096, onThisThread, true);
      expect(out.toString('utf8')).toBe(seqText());
    },
  );
});

describe('bad compressed input ends in a stream error, not a clean end or a hang', () => {
  const inputs: [string, Compression, Buffer, boolean][] = [
    ['xz', 'xz', fixtureBytes('nar/seq.nar.xz'), false],
    ['xz on the calling thread', 'xz', fixtureBytes('nar/seq.nar.xz'), true],
    ['zstd', 'zstd', fixtureBytes('nar/seq.nar.zst'), false],
    ['br', 'br', fixtureBytes('nar/seq.nar.br'), false],
    ['gzip', 'gzip', fixtureBytes('nar/seq.nar.gz'), false],
  ];

  describe.each(inputs)('%s', (_name, c, good, here) => {
    it('truncated', async () => {
      const cut = good.subarray(0, Math.floor(good.length / 2));
      await expect(decode(c, cut, 100, here)).rejects.toThrow();
    });

    it('cut just before its end', async () => {
      await expect(decode(c, good.subarray(0, good.length - 1), 4096, here)).rejects.toThrow();
    });

    it('corrupted in the middle', async () => {
      const bad = Buffer.from(good);
      for (let i = 0; i < 64; i++) bad[Math.floor(bad.length / 3) + i] ^= 0xa5;
      await expect(decode(c, bad, 100, here)).rejects.toThrow();
    });

    it('not compressed at all', async () => {
      await expect(decode(c, fixtureBytes('nar/leaf.nar'), 4096, here)).rejects.toThrow();
    });

    it('empty', async () => {
      await expect(decode(c, Buffer.alloc(0), 4096, here)).rejects.toThrow();
    });
  });
});

// Node's brotli decoder stops at the end of its stream and ignores what follows (the file's
// FileHash still covers those bytes), so brotli is not in this list.
describe('a stream followed by bytes that are not another stream is an error', () => {
  it.each([
    ['xz', 'nar/seq.nar.xz', false],
    ['xz', 'nar/seq.nar.xz', true],
    ['zstd', 'nar/seq.nar.zst', false],
    ['gzip', 'nar/seq.nar.gz', false],
  ] as const)('%s (on the calling thread: %s)', async (c, file, here) => {
    const trailing = Buffer.concat([fixtureBytes(file), Buffer.from('trailing garbage')]);
    await expect(decode(c, trailing, 4096, here)).rejects.toThrow();
  });
});

describe('a small input that inflates to 64 MiB (decompression bomb)', () => {
  const MiB = 1 << 20;
  const zeros = Buffer.alloc(64 * MiB);
  const bombs: [string, Compression, () => Buffer, boolean?][] = [
    ['xz', 'xz', () => fixtureBytes('cli/zeros-64MiB.xz')],
    ['xz on the calling thread', 'xz', () => fixtureBytes('cli/zeros-64MiB.xz'), true],
    ['zstd', 'zstd', () => fixtureBytes('cli/zeros-64MiB.zst')],
    ['gzip', 'gzip', () => zlib.gzipSync(zeros, { level: 9 })],
    [
      'br',
      'br',
      () =>
        zlib.brotliCompressSync(zeros, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 1 } }),
    ],
  ];

  it.each(bombs)(
    '%s: is not inflated into memory while nobody reads',
    async (_name, c, make, here) => {
      const input = make();
      expect(input.length).toBeLessThan(100_000);
      const decoder = createNarDecompressor(c, { onThisThread: here === true });
      if (decoder === null) throw new Error(`no decoder for ${c}`);
      decoder.end(input);
      await sleep(300);
      expect(decoder.readableLength).toBeLessThanOrEqual(8 * MiB);
      let total = 0;
      for await (const chunk of decoder as AsyncIterable<Buffer>) {
        if (!chunk.equals(zeros.subarray(0, chunk.length))) throw new Error('non-zero output');
        total += chunk.length;
      }
      expect(total).toBe(64 * MiB);
    },
    30_000,
  );
});

describe('destroying a decoder mid-stream (client went away)', () => {
  it.each([
    ['xz', 'nar/seq.nar.xz', false],
    ['xz', 'nar/seq.nar.xz', true],
    ['zstd', 'nar/seq.nar.zst', false],
    ['br', 'nar/seq.nar.br', false],
    ['gzip', 'nar/seq.nar.gz', false],
  ] as const)(
    '%s (on the calling thread: %s): closes without an error event',
    async (c, file, here) => {
      const decoder = createNarDecompressor(c, { onThisThread: here });
      if (decoder === null) throw new Error(`no decoder for ${c}`);
      const errors: Error[] = [];
      decoder.on('error', (err: Error) => errors.push(err));
      decoder.on('data', () => undefined);
      const input = fixtureBytes(file);
      decoder.write(input.subarray(0, Math.floor(input.length / 2)));
      await sleep(20);
      decoder.destroy();
      await sleep(50);
      expect(decoder.destroyed).toBe(true);
      expect(errors).toEqual([]);
    },
  );
});

describe('asyncXzIdle', () => {
  it('resolves once the slice a destroyed asynchronous xz decoder was decoding has finished', async () => {
    const decoder = createNarDecompressor('xz');
    if (decoder === null) throw new Error('no xz decoder');
    decoder.on('data', () => undefined);
    decoder.on('error', () => undefined);
    decoder.write(fixtureBytes('cli/zeros-64MiB.xz')); // each 4 KiB slice inflates to megabytes
    await sleep(5);
    decoder.destroy();
    // Its timeout is past the test's own: resolving at all means the slice finished.
    await asyncXzIdle(120_000);
    // Nothing left in flight: it resolves again.
    await asyncXzIdle(120_000);
    expect(decoder.destroyed).toBe(true);
  });
});
