import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  chunks,
  consume,
  Feed,
  ownCopy,
  rawSample,
  settle,
  waitFor,
  checkOf,
} from '../../test/support/nar-spool-kit';
import { DownloadFailedError } from '../common/errors';
import { SpoolArea } from '../storage/spool-area';
import { NarSpool } from './nar-spool';

// What one reader of a download is handed: the upstream's own chunks while it keeps up, the spool
// when it falls behind, and exactly a byte range when it asks for one.

let spoolDir: string;

beforeEach(async () => {
  spoolDir = await mkdtemp(join(tmpdir(), 'narwhal-download-'));
});

afterEach(async () => {
  await rm(spoolDir, { recursive: true, force: true });
});

describe('NarSpool readers', () => {
  it('hands a reader that keeps up the upstream chunks themselves, without copying them', async () => {
    const raw = rawSample(40 * 16_384 + 123);
    const fed = chunks(raw.file, 16_384).map(ownCopy);
    const feed = new Feed();
    const download = new NarSpool(raw.key, new SpoolArea(spoolDir), raw.file.length);
    const reader = consume(download.createReader());
    const receiving = download.receive(feed, checkOf(download, raw.expect));
    for (const chunk of fed) {
      feed.push(chunk);
      await waitFor(() => reader.bytes === download.written - 1, 'reader keeps up');
    }
    feed.end();
    await receiving;
    await waitFor(() => reader.ended, 'reader ends');
    expect(reader.data().equals(raw.file)).toBe(true);
    const upstreamMemory = new Set(fed.map((c) => c.buffer));
    expect(reader.chunks.every((c) => upstreamMemory.has(c.buffer))).toBe(true);
    await download.finishWriting(false);
  });

  it('serves a reader that falls behind the chunks kept in memory from the spool, then from memory', async () => {
    const raw = rawSample(5 * 1024 * 1024 + 7);
    const fed = chunks(raw.file, 65_536).map(ownCopy);
    const feed = new Feed();
    const download = new NarSpool(raw.key, new SpoolArea(spoolDir), raw.file.length);
    const receiving = download.receive(feed, checkOf(download, raw.expect));
    for (const chunk of fed.slice(0, -1)) feed.push(chunk);
    await waitFor(() => download.written === raw.file.length - 7, 'all but the last chunk written');
    // Joins 5 MiB late: the start is long gone from memory.
    const late = consume(download.createReader());
    await waitFor(() => late.bytes === download.written - 1, 'late reader catches up');
    feed.push(fed.at(-1)!);
    feed.end();
    await receiving;
    await waitFor(() => late.ended, 'late reader ends');
    expect(late.error).toBeUndefined();
    expect(late.data().equals(raw.file)).toBe(true);
    const upstreamMemory = new Set(fed.map((c) => c.buffer));
    const shared = late.chunks.map((c) => upstreamMemory.has(c.buffer));
    expect(shared[0]).toBe(true); // the first bytes are kept for the whole download
    expect(shared.slice(1, -1)).toContain(false); // the middle is read from the spool
    expect(shared.at(-1)).toBe(true); // caught up: the upstream's own chunk
    await download.finishWriting(false);
  });

  it('gives a reader for a range exactly those bytes, its last one only once the download is verified', async () => {
    const raw = rawSample(100_000);
    const feed = new Feed();
    const download = new NarSpool(raw.key, new SpoolArea(spoolDir), raw.file.length);
    const ranged = consume(download.createReader({ start: 1000, end: 1999 }));
    const receiving = download.receive(feed, checkOf(download, raw.expect));
    const parts = chunks(raw.file, 4096);
    for (const p of parts.slice(0, -1)) feed.push(p);
    await waitFor(() => ranged.bytes === 999, 'all but the last byte of the range');
    await settle();
    expect(ranged.bytes).toBe(999); // the range was written long ago, but nothing is verified yet
    expect(ranged.ended).toBe(false);
    feed.push(parts.at(-1)!);
    feed.end();
    await receiving;
    await waitFor(() => ranged.ended, 'range reader ends');
    expect(ranged.data().equals(raw.file.subarray(1000, 2000))).toBe(true);
    await download.finishWriting(false);
  });

  it('ends a range reader with an error, not a clean end, when the download turns out bad', async () => {
    const raw = rawSample(100_000);
    const bad = Buffer.from(raw.file);
    bad[50_000] ^= 1;
    const feed = new Feed();
    const download = new NarSpool(raw.key, new SpoolArea(spoolDir), raw.file.length);
    const ranged = consume(download.createReader({ start: 0, end: 9 }));
    const receiving = download.receive(feed, checkOf(download, raw.expect));
    for (const p of chunks(bad, 4096)) feed.push(p);
    feed.end();
    await expect(receiving).rejects.toThrow(DownloadFailedError);
    await waitFor(() => ranged.error !== undefined || ranged.ended, 'range reader finishes');
    expect(ranged.ended).toBe(false);
    expect(ranged.error).toBeInstanceOf(DownloadFailedError);
    expect(ranged.bytes).toBe(9);
    await download.finishWriting(true);
  });
});
