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

// How a download's chunks reach the spool file: written while the next ones are read, counted as
// written in order, and a download's first bytes kept in memory for clients that join late.

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

  it('reads on while a chunk is being written, and counts bytes as written once they are in the file, in order', async () => {
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
    const receiving = download.receive(feed, checkOf(download, SAMPLE.expect));
    const parts = chunks(SAMPLE.file, 8192);
    for (const p of parts.slice(0, 3)) feed.push(p);
    // The next chunks are written while the first one's write still runs...
    await waitFor(() => calls >= 3, 'three writes started');
    await settle();
    // ...but nothing counts as written, for readers and the check, before the first is in.
    expect(download.written).toBe(0);
    expect(reader.bytes).toBe(0);
    release();
    await waitFor(() => download.written === 3 * 8192, 'three chunks written');
    for (const p of parts.slice(3)) feed.push(p);
    feed.end();
    await receiving;
    expect(download.state).toBe('verified');
    await waitFor(() => reader.ended, 'reader ends');
    expect(sha256Hex(reader.data())).toBe(sha256Hex(SAMPLE.file));
    expect(sha256Hex(await readFile(download.path))).toBe(sha256Hex(SAMPLE.file));
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
    expect(reader.bytes).toBeLessThanOrEqual(8192);
    await download.finishWriting(true);
    expect(await exists(download.path)).toBe(false);
  });
});
