import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  chunks,
  consume,
  exists,
  Feed,
  makeSample,
  openFdsOf,
  settle,
  waitFor,
  type Received,
  checkOf,
} from '../../test/support/nar-spool-kit';
import { sha256Hex } from '../../test/support/hash';
import { DownloadFailedError } from '../common/errors';
import { SpoolArea } from '../storage/spool-area';
import { NarSpool } from './nar-spool';
import { checksContent } from './nar-verifier';

const SAMPLE = makeSample(300_000, 5);
const OTHER = makeSample(300_000, 6);
const KEY = `${SAMPLE.expect.fileHash!.slice('sha256:'.length)}.nar.xz`;

let spoolDir: string;

beforeEach(async () => {
  spoolDir = await mkdtemp(join(tmpdir(), 'narwhal-download-'));
});

afterEach(async () => {
  await rm(spoolDir, { recursive: true, force: true });
});

describe('NarSpool fan-out', () => {
  it('gives readers created before and after the first chunk identical, complete bytes', async () => {
    const feed = new Feed();
    const download = new NarSpool(KEY, new SpoolArea(spoolDir), SAMPLE.file.length);
    const early = consume(download.createReader());
    const receiving = download.receive(feed, checkOf(download, SAMPLE.expect));

    const parts = chunks(SAMPLE.file, 4096);
    const readers: Received[] = [early];
    for (const [i, part] of parts.entries()) {
      feed.push(part);
      if (i === 0 || i === 5 || i === parts.length - 1) {
        await waitFor(
          () => download.written >= (i + 1) * 4096 || download.written === SAMPLE.file.length,
          'chunk written',
        );
        readers.push(consume(download.createReader()));
      }
    }
    feed.end();
    await receiving;
    expect(download.state).toBe('verified');
    expect(download.length).toBe(SAMPLE.file.length);
    await waitFor(() => readers.every((r) => r.ended), 'every reader ends');
    for (const r of readers) {
      expect(r.error).toBeUndefined();
      expect(r.bytes).toBe(SAMPLE.file.length);
      expect(sha256Hex(r.data())).toBe(sha256Hex(SAMPLE.file));
    }
    expect(readers).toHaveLength(4);
    await download.finishWriting(false);
  });

  it('holds back the last byte from every reader until the download is verified', async () => {
    const feed = new Feed();
    const download = new NarSpool(KEY, new SpoolArea(spoolDir), SAMPLE.file.length);
    const before = consume(download.createReader());
    const receiving = download.receive(feed, checkOf(download, SAMPLE.expect));
    let settled = false;
    void receiving.then(() => (settled = true));

    const parts = chunks(SAMPLE.file, 10_000);
    const last = parts.pop()!;
    for (const p of parts) feed.push(p);
    const allButLast = SAMPLE.file.length - last.length;
    await waitFor(() => download.written === allButLast, 'all but the last chunk written');
    const after = consume(download.createReader());
    await waitFor(
      () => before.bytes === allButLast - 1 && after.bytes === allButLast - 1,
      'readers catch up',
    );
    await settle();
    expect(before.bytes).toBe(allButLast - 1);
    expect(after.bytes).toBe(allButLast - 1);

    // The last chunk arrives, but the body has not ended: still unverified.
    feed.push(last);
    await waitFor(() => download.written === SAMPLE.file.length, 'last chunk written');
    await waitFor(() => before.bytes === SAMPLE.file.length - 1, 'reader takes all it may');
    await settle();
    expect(download.state).toBe('streaming');
    expect(settled).toBe(false);
    for (const r of [before, after]) {
      expect(r.bytes).toBe(SAMPLE.file.length - 1);
      expect(r.ended).toBe(false);
      expect(r.error).toBeUndefined();
    }

    feed.end();
    await receiving;
    await waitFor(() => before.ended && after.ended, 'readers end');
    expect(sha256Hex(before.data())).toBe(sha256Hex(SAMPLE.file));
    expect(sha256Hex(after.data())).toBe(sha256Hex(SAMPLE.file));
    await download.finishWriting(false);
  });

  it('lets a reader created after verification but before finishWriting read everything', async () => {
    const feed = new Feed();
    const download = new NarSpool(KEY, new SpoolArea(spoolDir));
    const receiving = download.receive(feed, checkOf(download, SAMPLE.expect));
    for (const p of chunks(SAMPLE.file, 50_000)) feed.push(p);
    feed.end();
    await receiving;
    expect(download.state).toBe('verified');
    const late = consume(download.createReader());
    await waitFor(() => late.ended || late.error !== undefined, 'late reader finishes');
    expect(late.error).toBeUndefined();
    expect(sha256Hex(late.data())).toBe(sha256Hex(SAMPLE.file));
    await download.finishWriting(false);
  });

  it('keeps the spool readable for a reader still streaming after finishWriting', async () => {
    const feed = new Feed();
    const download = new NarSpool(KEY, new SpoolArea(spoolDir));
    const receiving = download.receive(feed, checkOf(download, SAMPLE.expect));
    for (const p of chunks(SAMPLE.file, 50_000)) feed.push(p);
    feed.end();
    await receiving;
    const reader = download.createReader();
    await download.finishWriting(false);
    const r = consume(reader);
    await waitFor(() => r.ended || r.error !== undefined, 'reader finishes');
    expect(r.error).toBeUndefined();
    expect(sha256Hex(r.data())).toBe(sha256Hex(SAMPLE.file));
  });

  it('never ends a reader created after the spool is closed cleanly with missing bytes', async () => {
    const feed = new Feed();
    const download = new NarSpool(KEY, new SpoolArea(spoolDir));
    const receiving = download.receive(feed, checkOf(download, SAMPLE.expect));
    for (const p of chunks(SAMPLE.file, 50_000)) feed.push(p);
    feed.end();
    await receiving;
    await download.finishWriting(false);
    let r: Received | undefined;
    try {
      r = consume(download.createReader());
    } catch {
      return; // refusing to make a reader is fine
    }
    await waitFor(() => r.ended || r.error !== undefined, 'reader finishes');
    // Either the whole NAR or an error; a clean end after fewer bytes is a truncated 200 for the client.
    if (r.ended) expect(r.bytes).toBe(SAMPLE.file.length);
    else expect(r.error).toBeInstanceOf(Error);
  });

  it('counts readers while they stream', async () => {
    const feed = new Feed();
    const download = new NarSpool(KEY, new SpoolArea(spoolDir));
    const a = download.createReader();
    const b = consume(download.createReader());
    expect(download.readerCount).toBe(2);
    const receiving = download.receive(feed, checkOf(download, SAMPLE.expect));
    a.destroy();
    await waitFor(() => download.readerCount === 1, 'destroyed reader no longer counted');
    for (const p of chunks(SAMPLE.file, 50_000)) feed.push(p);
    feed.end();
    await receiving;
    await waitFor(() => b.ended, 'reader ends');
    expect(download.readerCount).toBe(0);
    await download.finishWriting(false);
  });
});

describe('NarSpool failures', () => {
  it('ends every reader with an error, never with end, when verification fails', async () => {
    const feed = new Feed();
    const download = new NarSpool(KEY, new SpoolArea(spoolDir), SAMPLE.file.length);
    const before = consume(download.createReader());
    // Expect the hashes of other content: the bytes arrive fine but do not verify.
    const receiving = download.receive(
      feed,
      checkOf(download, { ...OTHER.expect, fileSize: SAMPLE.file.length }),
    );
    const result = receiving.then(
      () => 'resolved',
      (e: unknown) => e,
    );
    const parts = chunks(SAMPLE.file, 8192);
    for (const p of parts.slice(0, 3)) feed.push(p);
    await waitFor(() => download.written >= 3 * 8192, 'some chunks written');
    const during = consume(download.createReader());
    for (const p of parts.slice(3)) feed.push(p);
    await waitFor(() => download.written === SAMPLE.file.length, 'all written');
    feed.end();

    const error = await result;
    expect(error).toBeInstanceOf(DownloadFailedError);
    expect(download.state).toBe('failed');
    expect(download.error).toBe(error);
    const after = consume(download.createReader());
    await waitFor(
      () => [before, during, after].every((r) => r.error !== undefined),
      'every reader errors',
    );
    await settle();
    for (const r of [before, during, after]) {
      expect(r.error).toBeInstanceOf(DownloadFailedError);
      expect(r.ended).toBe(false);
      expect(r.bytes).toBeLessThan(SAMPLE.file.length);
    }
    await download.finishWriting(true);
    expect(await exists(download.path)).toBe(false);
  });

  it('fails readers when the upstream body breaks mid-way', async () => {
    const feed = new Feed();
    const download = new NarSpool(KEY, new SpoolArea(spoolDir), SAMPLE.file.length);
    const reader = consume(download.createReader());
    const receiving = download.receive(feed, checkOf(download, SAMPLE.expect));
    const result = receiving.then(
      () => 'resolved',
      (e: unknown) => e,
    );
    feed.push(SAMPLE.file.subarray(0, 10_000));
    await waitFor(() => reader.bytes === 9_999, 'reader gets all but the last byte');
    feed.error(new Error('ECONNRESET'));
    const error = await result;
    expect(error).toBeInstanceOf(DownloadFailedError);
    expect((error as Error).message).toContain('ECONNRESET');
    await waitFor(() => reader.error !== undefined, 'reader errors');
    expect(reader.ended).toBe(false);
    await download.finishWriting(true);
  });

  it('fails when the body is shorter than the announced length, even if nothing else is checked', async () => {
    const feed = new Feed();
    const download = new NarSpool(KEY, new SpoolArea(spoolDir), 1000);
    const reader = consume(download.createReader());
    expect(checksContent({ compression: 'bzip2' })).toBe(false);
    const result = download.receive(feed, checkOf(download, { compression: 'bzip2' })).then(
      () => 'resolved',
      (e: unknown) => e,
    );
    feed.push(Buffer.alloc(900, 1));
    feed.end();
    const error = await result;
    expect(error).toBeInstanceOf(DownloadFailedError);
    expect((error as Error).message).toContain('900 of 1000');
    await waitFor(() => reader.error !== undefined, 'reader errors');
    expect(reader.ended).toBe(false);
    await download.finishWriting(true);
  });

  it('fails readers created before receive when fail() is called before any byte', async () => {
    const download = new NarSpool(KEY, new SpoolArea(spoolDir));
    const reader = consume(download.createReader());
    download.fail(new DownloadFailedError('no upstream has it'));
    await waitFor(() => reader.error !== undefined, 'reader errors');
    expect(reader.error!.message).toBe('no upstream has it');
    expect(reader.ended).toBe(false);
    expect(reader.bytes).toBe(0);
    await download.finishWriting(true);
  });
});

describe('NarSpool spool file', () => {
  it('writes the spool in the spool dir with mode 0600 and keeps it for the caller after success', async () => {
    const feed = new Feed();
    const download = new NarSpool(KEY, new SpoolArea(spoolDir));
    expect(download.path.startsWith(join(spoolDir, KEY))).toBe(true);
    expect(download.path.endsWith('.part')).toBe(true);
    const receiving = download.receive(feed, checkOf(download, SAMPLE.expect));
    feed.push(SAMPLE.file.subarray(0, 100));
    await waitFor(() => download.written === 100, 'first chunk written');
    expect((await stat(download.path)).mode & 0o777).toBe(0o600);
    feed.push(SAMPLE.file.subarray(100));
    feed.end();
    await receiving;
    expect(sha256Hex(await readFile(download.path))).toBe(sha256Hex(SAMPLE.file));
    await download.finishWriting(false);
    expect(await exists(download.path)).toBe(true);
    // The verifier thread closes its own handle once it has reported: wait for it.
    await waitFor(() => openFdsOf(download.path).length === 0, 'spool closed by every user');
  });

  it('sync() flushes through the writer handle while the spool is open, and refuses before and after', async () => {
    const download = new NarSpool(KEY, new SpoolArea(spoolDir));
    await expect(download.sync()).rejects.toThrow(/spool is not open/);
    const feed = new Feed();
    const receiving = download.receive(feed, checkOf(download, SAMPLE.expect));
    feed.push(SAMPLE.file);
    feed.end();
    await receiving;
    await expect(download.sync()).resolves.toBeUndefined();
    expect(sha256Hex(await readFile(download.path))).toBe(sha256Hex(SAMPLE.file));
    await download.finishWriting(true);
    await expect(download.sync()).rejects.toThrow(/spool is not open/);
  });

  it('deletes the spool on finishWriting(true) and closes it once the last reader is done', async () => {
    const feed = new Feed();
    const download = new NarSpool(KEY, new SpoolArea(spoolDir));
    const reader = download.createReader();
    const receiving = download.receive(feed, checkOf(download, SAMPLE.expect));
    for (const p of chunks(SAMPLE.file, 50_000)) feed.push(p);
    feed.end();
    await receiving;
    await download.finishWriting(true);
    expect(await exists(download.path)).toBe(false);
    expect(await readdir(spoolDir)).toEqual([]);
    // The unlinked file stays open for the reader still attached…
    const r = consume(reader);
    await waitFor(() => r.ended || r.error !== undefined, 'reader finishes');
    expect(sha256Hex(r.data())).toBe(sha256Hex(SAMPLE.file));
    // …and is closed after it (closing is asynchronous: wait for it, bounded by event-loop turns).
    await waitFor(
      () => openFdsOf(`${download.path} (deleted)`).length === 0,
      'spool closed after the last reader',
    );
    expect(openFdsOf(download.path)).toEqual([]);
  });

  it('deletes the spool of a failed download', async () => {
    const feed = new Feed();
    const download = new NarSpool(KEY, new SpoolArea(spoolDir));
    const result = download.receive(feed, checkOf(download, OTHER.expect)).catch((e: unknown) => e);
    feed.push(SAMPLE.file);
    feed.end();
    expect(await result).toBeInstanceOf(DownloadFailedError);
    expect(await exists(download.path)).toBe(true);
    await download.finishWriting(true);
    expect(await readdir(spoolDir)).toEqual([]);
    // The verifier thread closes its own handle once it has reported: wait for it.
    await waitFor(
      () => openFdsOf(`${download.path} (deleted)`).length === 0,
      'spool closed by every user',
    );
  });
});
