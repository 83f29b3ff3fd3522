import { mkdtemp, open, readFile, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  chunks,
  consume,
  exists,
  Feed,
  makeSample,
  settle,
  waitFor,
  checkOf,
} from '../../test/support/nar-spool-kit';
import { nixSha256, sha256Hex } from '../../test/support/hash';
import { DownloadFailedError } from '../common/errors';
import { SpoolArea } from '../storage/spool-area';
import { NarSpool } from './nar-spool';
import { VerifierPool } from './verification/verifier-pool';

// How a download's chunks reach the spool file and its readers: readers get each chunk as it
// arrives, from memory, while it is written (the next ones read meanwhile); a check that reads the
// file is told of bytes once they are in it, in order; a download's first bytes stay in memory for
// clients that join late.

const SAMPLE = makeSample(300_000, 5);
const KEY = `${SAMPLE.expect.fileHash!.slice('sha256:'.length)}.nar.xz`;

let spoolDir: string;

beforeEach(async () => {
  spoolDir = await mkdtemp(join(tmpdir(), 'narwhal-spool-writes-'));
});

afterEach(async () => {
  await rm(spoolDir, { recursive: true, force: true });
});

type Write = (this: FileHandle, ...args: unknown[]) => Promise<{ bytesWritten: number }>;

/** FileHandle's prototype (node:fs/promises does not export the class) and its own `write`. */
async function fileHandlePrototype(): Promise<{ proto: FileHandle; realWrite: Write }> {
  const probe = await open(join(spoolDir, 'probe'), 'w');
  await probe.close();
  const proto = Object.getPrototypeOf(probe) as FileHandle;
  const realWrite = Object.getOwnPropertyDescriptor(proto, 'write')?.value as Write;
  return { proto, realWrite };
}

describe('NarSpool writes', () => {
  afterEach(() => vi.restoreAllMocks());

  it('reads on while a chunk is being written: readers get it from memory, the file check only once it and every chunk before it are in the file', async () => {
    const { proto, realWrite } = await fileHandlePrototype();
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let calls = 0;
    vi.spyOn(proto, 'write').mockImplementation(async function (
      this: FileHandle,
      ...args: unknown[]
    ) {
      if (calls++ === 0) await gate; // the first chunk's write is slow
      return realWrite.apply(this, args);
    } as never);

    const feed = new Feed();
    const download = new NarSpool(KEY, new SpoolArea(spoolDir), SAMPLE.file.length);
    const reader = consume(download.createReader());
    const check = checkOf(download, SAMPLE.expect);
    const toldCheck: number[] = [];
    const grew = check.grew.bind(check);
    const receiving = download.receive(feed, {
      ...check,
      grew: (size, chunk) => {
        toldCheck.push(size);
        expect(size).toBeLessThanOrEqual(download.written); // never ahead of the file
        grew(size, chunk);
      },
      finish: (size) => check.finish(size),
      abandon: () => check.abandon(),
    });
    const parts = chunks(SAMPLE.file, 8192);
    for (const p of parts.slice(0, 3)) feed.push(p);
    // The next chunks are written while the first one's write still runs...
    await waitFor(() => calls >= 3, 'three writes started');
    await waitFor(() => reader.bytes === 3 * 8192 - 1, 'reader has all but the last byte');
    // ...readers have them already (all but the last byte), the file check nothing yet.
    expect(download.written).toBe(0);
    expect(download.arrived).toBe(3 * 8192);
    expect(toldCheck).toEqual([]);
    release();
    await waitFor(() => download.written === 3 * 8192, 'three chunks written');
    expect(toldCheck).toEqual([8192, 2 * 8192, 3 * 8192]);
    for (const p of parts.slice(3)) feed.push(p);
    feed.end();
    await receiving;
    expect(download.state).toBe('verified');
    await waitFor(() => reader.ended, 'reader ends');
    expect(sha256Hex(reader.data())).toBe(sha256Hex(SAMPLE.file));
    expect(sha256Hex(await readFile(download.path))).toBe(sha256Hex(SAMPLE.file));
    await download.finishWriting(true);
  });

  it('verifies a small NAR checked on this thread before its write lands, but resolves only once it is in the file', async () => {
    const small = makeSample(2_000, 1);
    const { proto, realWrite } = await fileHandlePrototype();
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    vi.spyOn(proto, 'write').mockImplementation(async function (
      this: FileHandle,
      ...args: unknown[]
    ) {
      await gate;
      return realWrite.apply(this, args);
    } as never);

    const feed = new Feed();
    const key = `${small.expect.fileHash!.slice('sha256:'.length)}.nar.xz`;
    const download = new NarSpool(key, new SpoolArea(spoolDir), small.file.length);
    const check = new VerifierPool().checkSpool(download.path, small.expect, small.file.length);
    expect(check.checksChunks).toBe(true);
    const reader = consume(download.createReader());
    let resolved = false;
    const receiving = download.receive(feed, check).then(() => (resolved = true));
    for (const p of chunks(small.file, 1000)) feed.push(p);
    feed.end();
    // The client has the whole verified NAR while nothing is in the file yet...
    await waitFor(() => reader.ended, 'reader ends');
    expect(reader.data().equals(small.file)).toBe(true);
    expect(download.state).toBe('verified');
    expect(download.written).toBe(0);
    expect(download.inFile).toBe(false);
    expect(download.wholeInMemory()?.equals(small.file)).toBe(true);
    // ...but the download is done (committable) only once it is.
    await settle();
    expect(resolved).toBe(false);
    release();
    await receiving;
    expect(download.inFile).toBe(true);
    expect((await readFile(download.path)).equals(small.file)).toBe(true);
    await download.finishWriting(true);
    expect(download.wholeInMemory()?.equals(small.file)).toBe(true); // still there for memory
  });

  it('never ends a reader cleanly with a small NAR whose bytes are wrong, even from memory', async () => {
    const small = makeSample(2_000, 1);
    const bad = Buffer.from(small.file);
    bad[bad.length >> 1] ^= 0xff;
    const feed = new Feed();
    const key = `${small.expect.fileHash!.slice('sha256:'.length)}.nar.xz`;
    const download = new NarSpool(key, new SpoolArea(spoolDir), bad.length);
    const check = new VerifierPool().checkSpool(download.path, small.expect, bad.length);
    const reader = consume(download.createReader());
    const result = download.receive(feed, check).then(
      () => 'resolved',
      (e: unknown) => e,
    );
    feed.push(bad);
    feed.end();
    expect(await result).toBeInstanceOf(Error);
    await waitFor(() => reader.error !== undefined, 'reader errors');
    expect(reader.ended).toBe(false);
    expect(reader.bytes).toBeLessThan(bad.length);
    expect(download.wholeInMemory()).toBeUndefined();
    await download.finishWriting(true);
  });

  it('serves a reader that joins late its first bytes from memory, not from the spool file', async () => {
    // Past the recent chunks kept for readers in step (512 KiB) and the first bytes kept (256 KiB).
    const file = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < file.length; i++) file[i] = (i * 7919) % 251;
    const known = {
      compression: 'none' as const,
      fileHash: nixSha256(file),
      fileSize: file.length,
    };
    const feed = new Feed();
    const download = new NarSpool(KEY, new SpoolArea(spoolDir), file.length);
    const receiving = download.receive(feed, checkOf(download, known));
    for (const p of chunks(file, 64 * 1024)) feed.push(p);
    await waitFor(() => download.written === file.length, 'all written');
    const reads: number[] = [];
    const readAt = download.readAt.bind(download);
    vi.spyOn(download, 'readAt').mockImplementation((buf, offset) => {
      reads.push(offset);
      return readAt(buf, offset);
    });
    const late = consume(download.createReader());
    feed.end();
    await receiving;
    await waitFor(() => late.ended, 'late reader ends');
    expect(late.data().equals(file)).toBe(true);
    expect(reads.length).toBeGreaterThan(0); // the middle is read from the file
    expect(Math.min(...reads)).toBeGreaterThanOrEqual(256 * 1024);
    await download.finishWriting(true);
  });

  it('fails the download, never ending a reader cleanly, when a write fails while others run', async () => {
    const { proto, realWrite } = await fileHandlePrototype();
    let calls = 0;
    vi.spyOn(proto, 'write').mockImplementation(async function (
      this: FileHandle,
      ...args: unknown[]
    ) {
      if (++calls === 2) throw Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' });
      return realWrite.apply(this, args);
    } as never);

    const feed = new Feed();
    const download = new NarSpool(KEY, new SpoolArea(spoolDir), SAMPLE.file.length);
    const reader = consume(download.createReader());
    const result = download.receive(feed, checkOf(download, SAMPLE.expect)).then(
      () => 'resolved',
      (e: unknown) => e,
    );
    for (const p of chunks(SAMPLE.file, 8192)) feed.push(p);
    feed.end();
    const error = await result;
    expect(error).toBeInstanceOf(DownloadFailedError);
    expect((error as Error).message).toContain('EIO');
    expect(download.state).toBe('failed');
    await waitFor(() => reader.error !== undefined, 'reader errors');
    expect(reader.ended).toBe(false);
    expect(reader.bytes).toBeLessThan(SAMPLE.file.length);
    await download.finishWriting(true);
    expect(await exists(download.path)).toBe(false);
  });
});
