import { createCipheriv } from 'node:crypto';
import { readdir, writeFile, stat as statFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NotFoundError } from '../../src/common/errors';
import type { NarStore } from '../../src/storage/nar-store';
import { sha256, sha256Hex, sha256HexOf } from '../support/hash';
import { readAll } from '../support/streams';

export interface StoreUnderTest {
  store: NarStore;
  cleanup(): Promise<void>;
}

const MiB = 1024 * 1024;

/**
 * What every NarStore must do, whatever is behind it. Each test gets a fresh, empty store from
 * `makeStore`. Sizes are chosen so that an S3 store with 8 MiB parts goes through multipart uploads.
 */
export function narStoreContract(name: string, makeStore: () => Promise<StoreUnderTest>): void {
  describe(`NarStore contract: ${name}`, () => {
    let current: StoreUnderTest | undefined;
    let store: NarStore;

    beforeEach(async () => {
      current = await makeStore();
      store = current.store;
    });
    afterEach(async () => {
      await current?.cleanup(); // absent when an outer hook skipped the test
      current = undefined;
    });

    it('stores, stats and reads back an object', async () => {
      const data = Buffer.from('nix-archive-1 '.repeat(100));
      expect(await store.stat(keyOf(1))).toBeNull();
      await store.put(keyOf(1), Readable.from([data]), data.length);
      expect(await store.stat(keyOf(1))).toEqual({ size: data.length });
      expect(await readAll(await store.read(keyOf(1)))).toEqual(data);
    });

    it('rejects reads of an absent object with NotFoundError', async () => {
      await expect(store.read(keyOf(2))).rejects.toBeInstanceOf(NotFoundError);
      await expect(store.read(keyOf(2), { start: 0, end: 9 })).rejects.toBeInstanceOf(
        NotFoundError,
      );
    });

    it('reads byte ranges with an inclusive end', async () => {
      const data = generatedBuffer(1000, 'ranges');
      await store.put(keyOf(3), Readable.from([data]), data.length);
      const range = async (start: number, end?: number) =>
        readAll(await store.read(keyOf(3), { start, end }));
      expect(await range(10, 19)).toEqual(data.subarray(10, 20));
      expect(await range(500)).toEqual(data.subarray(500));
      // (Not `{ start: 0, end: 0 }`: s3rver answers `bytes=0-0` with the whole object.)
      expect(await range(5, 5)).toEqual(data.subarray(5, 6));
      expect(await range(990, 5000)).toEqual(data.subarray(990)); // an end past the object is clamped
      expect(await range(999)).toEqual(data.subarray(999));
    });

    it('streams a 64 MiB put without holding it in memory, byte for byte', async () => {
      const size = 64 * MiB;
      const expected = await sha256HexOf(generatedBody(size, 'big'));
      const memory = sampleMemory();
      await store.put(keyOf(4), generatedBody(size, 'big'), size);
      const peak = memory.stop();
      console.info(
        `[${name}] 64 MiB put: peak rss +${(peak.rss / MiB).toFixed(1)} MiB, ` +
          `peak Buffer memory +${(peak.arrayBuffers / MiB).toFixed(1)} MiB`,
      );
      expect(await store.stat(keyOf(4))).toEqual({ size });
      expect(await sha256HexOf(await store.read(keyOf(4)))).toEqual(expected);
    });

    it('stores nothing when the body fails half-way', async () => {
      const failing = generatedBody(24 * MiB, 'aborted', { failAt: 20 * MiB });
      await expect(store.put(keyOf(5), failing)).rejects.toThrow('download failed half-way');
      await expectEmpty(store, keyOf(5));
    });

    it('stores nothing when the body is shorter or longer than the given size', async () => {
      await expect(
        store.put(keyOf(6), generatedBody(9 * MiB, 'short'), 9 * MiB + 1),
      ).rejects.toThrow();
      await expect(store.put(keyOf(6), generatedBody(1000, 'long'), 999)).rejects.toThrow();
      await expectEmpty(store, keyOf(6));
    });

    it('commits a spool file and consumes it', async () => {
      const data = generatedBuffer(3 * MiB, 'spool');
      const spool = join(store.spool.dir, `${keyOf(7)}.0123456789ab.part`);
      await writeFile(spool, data);
      await store.putFile(keyOf(7), spool);
      expect(await store.stat(keyOf(7))).toEqual({ size: data.length });
      // (Not toEqual: a deep comparison of 3 MiB Buffers takes Vitest tens of seconds.)
      expect(await sha256HexOf(await store.read(keyOf(7)))).toEqual(sha256Hex(data));
      await expect(statFile(spool)).rejects.toMatchObject({ code: 'ENOENT' });
    });

    it('leaves one complete object after concurrent puts of the same key', async () => {
      const size = 9 * MiB;
      const expected = await sha256HexOf(generatedBody(size, 'same'));
      await Promise.all(
        Array.from({ length: 5 }, () => store.put(keyOf(8), generatedBody(size, 'same'), size)),
      );
      expect(await store.stat(keyOf(8))).toEqual({ size });
      expect(await sha256HexOf(await store.read(keyOf(8)))).toEqual(expected);
      expect(await listAll(store)).toEqual([{ key: keyOf(8), size }]);
    });

    it('deletes objects, and deleting an absent one is fine', async () => {
      await store.put(keyOf(9), Readable.from([Buffer.from('gone soon')]));
      await store.delete(keyOf(9));
      await expectEmpty(store, keyOf(9));
      await expect(store.delete(keyOf(9))).resolves.toBeUndefined();
      await expect(store.delete(keyOf(10))).resolves.toBeUndefined();
    });

    it('lists exactly the stored keys and sizes', async () => {
      expect(await listAll(store)).toEqual([]);
      const sizes = [1, 4096, 100_000, 0];
      for (const [i, size] of sizes.entries()) {
        await store.put(keyOf(20 + i), Readable.from([generatedBuffer(size, `list${i}`)]), size);
      }
      const expected = sizes.map((size, i) => ({ key: keyOf(20 + i), size }));
      expect(await listAll(store)).toEqual(sortByKey(expected));
      await store.delete(keyOf(21));
      expect(await listAll(store)).toEqual(sortByKey(expected.filter((e) => e.key !== keyOf(21))));
    });

    it('reports itself writable', async () => {
      await expect(store.checkWritable()).resolves.toBeUndefined();
      expect(await listAll(store)).toEqual([]); // the probe leaves nothing behind
    });

    it('keeps side documents (listings, logs, realisations) apart from the NAR listing', async () => {
      const drv = '0123456789abcdfghijklmnpqrsvwxyz-hello.drv';
      const docs = [
        'ls/0123456789abcdfghijklmnpqrsvwxyz.ls',
        `log/${drv}`,
        'realisations/sha256:0123abcd!out.doi',
        `build-trace-v2/${drv}/out.doi`,
      ];
      for (const [i, key] of docs.entries()) {
        await store.put(key, Readable.from([Buffer.from(`document ${i}`)]));
        expect(await store.stat(key)).toEqual({ size: 10 + String(i).length - 1 });
        expect((await readAll(await store.read(key))).toString()).toBe(`document ${i}`);
      }
      await store.put(keyOf(30), Readable.from([Buffer.from('nar')]), 3);
      expect(await listAll(store)).toEqual([{ key: keyOf(30), size: 3 }]);
      await store.delete(docs[1]);
      expect(await store.stat(docs[1])).toBeNull();
    });

    it('rejects keys that are not NAR file names', async () => {
      const spool = join(store.spool.dir, 'invalid-key-test.part');
      await writeFile(spool, 'x');
      for (const key of INVALID_KEYS) {
        await expect(store.stat(key), key).rejects.toThrow();
        await expect(store.read(key), key).rejects.toThrow();
        await expect(store.put(key, Readable.from([Buffer.from('x')])), key).rejects.toThrow();
        await expect(store.putFile(key, spool), key).rejects.toThrow();
        await expect(store.delete(key), key).rejects.toThrow();
      }
      await expect(statFile(spool)).resolves.toBeTruthy(); // a rejected putFile keeps its spool
      expect(await listAll(store)).toEqual([]);
    });
  });
}

const INVALID_KEYS = [
  '',
  'ls/../x',
  'log/..',
  'log/a/b/c',
  'tmp/x.ls',
  'ls/',
  'log/a b',
  '../../../etc/passwd',
  'nar/0123456789abcdef.nar.xz',
  '0123456789abcdef.nar.xz/../x',
  '0123456789ABCDEF.nar.xz',
  'abc.nar',
  '0123456789abcdef.narinfo',
  '0123456789abcdef.nar.',
];

/** A valid, distinct NAR file name for each `i`. */
export function keyOf(i: number): string {
  return `${i.toString(36).padStart(32, '0')}.nar.xz`;
}

/** After a failed or deleted write: no object, nothing listed, reads miss, no spool leftovers. */
async function expectEmpty(store: NarStore, key: string): Promise<void> {
  expect(await store.stat(key)).toBeNull();
  expect(await listAll(store)).toEqual([]);
  await expect(store.read(key)).rejects.toBeInstanceOf(NotFoundError);
  expect(await readdir(store.spool.dir).catch(() => [])).toEqual([]);
}

export async function listAll(store: NarStore): Promise<{ key: string; size: number }[]> {
  const all: { key: string; size: number }[] = [];
  for await (const entry of store.list()) all.push(entry);
  return sortByKey(all);
}

function sortByKey<T extends { key: string }>(entries: T[]): T[] {
  return [...entries].sort((a, b) => a.key.localeCompare(b.key));
}

/**
 * `size` pseudo-random bytes (the AES-CTR keystream of `seed`), made chunk by chunk as they are read,
 * so a large body never exists in memory. With `failAt`, the stream errors once that many bytes have
 * been read, like a download that breaks.
 */
export function generatedBody(
  size: number,
  seed: string,
  options: { failAt?: number; chunkSize?: number } = {},
): Readable {
  const chunkSize = options.chunkSize ?? 256 * 1024;
  const key = sha256(seed).subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(chunkSize);
  let produced = 0;
  return new Readable({
    read() {
      if (options.failAt !== undefined && produced >= options.failAt) {
        this.destroy(new Error('download failed half-way'));
        return;
      }
      const n = Math.min(chunkSize, size - produced);
      if (n === 0) {
        this.push(null);
        return;
      }
      produced += n;
      this.push(cipher.update(zeros.subarray(0, n)));
    },
  });
}

export function generatedBuffer(size: number, seed: string): Buffer {
  const key = sha256(seed).subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(size));
}

/** Samples the process's memory until stopped; returns the peak growth over the starting values. */
export function sampleMemory(): { stop(): { rss: number; arrayBuffers: number } } {
  const start = process.memoryUsage();
  const peak = { rss: 0, arrayBuffers: 0 };
  const sample = () => {
    const now = process.memoryUsage();
    peak.rss = Math.max(peak.rss, now.rss - start.rss);
    peak.arrayBuffers = Math.max(peak.arrayBuffers, now.arrayBuffers - start.arrayBuffers);
  };
  const timer = setInterval(sample, 10);
  return {
    stop() {
      clearInterval(timer);
      sample();
      return peak;
    },
  };
}
