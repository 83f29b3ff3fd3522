import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readlinkSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DownloadFailedError } from '../common/errors';
import { encodeNix32 } from '../nix/base32';
import { NarDownload } from './nar-download';
import { NarVerifier, type NarExpectations } from './nar-verifier';

function nixSha256(bytes: Buffer): string {
  return `sha256:${encodeNix32(createHash('sha256').update(bytes).digest())}`;
}

function sha256Hex(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Stand-in NAR content, compressed with the real xz. */
function makeSample(size: number, seed: number) {
  const lines: string[] = [];
  let x = seed;
  let length = 0;
  while (length < size) {
    x = (x * 1103515245 + 12345) >>> 0;
    const line = `${lines.length} ${x.toString(36)}\n`;
    lines.push(line);
    length += line.length;
  }
  const nar = Buffer.from(lines.join('')).subarray(0, size);
  const file = execFileSync('xz', ['-c', '-6'], { input: nar, maxBuffer: 64 << 20 });
  const expect: NarExpectations = {
    compression: 'xz',
    fileHash: nixSha256(file),
    fileSize: file.length,
    narHash: nixSha256(nar),
    narSize: nar.length,
  };
  return { nar, file, expect };
}

/** An uncompressed NAR of random bytes (FileHash = NarHash). */
function rawSample(size: number) {
  const file = randomBytes(size);
  const expect: NarExpectations = {
    compression: 'none',
    fileHash: nixSha256(file),
    fileSize: size,
    narHash: nixSha256(file),
    narSize: size,
  };
  return { file, expect, key: `${expect.fileHash!.slice('sha256:'.length)}.nar` };
}

const SAMPLE = makeSample(300_000, 5);
const OTHER = makeSample(300_000, 6);
const KEY = `${SAMPLE.expect.fileHash!.slice('sha256:'.length)}.nar.xz`;

/** A copy of `bytes` in memory of its own (never a slice of Node's shared small-buffer pool). */
function ownCopy(bytes: Buffer): Buffer {
  const copy = Buffer.from(new ArrayBuffer(bytes.length));
  bytes.copy(copy);
  return copy;
}

function chunks(bytes: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, i + size));
  return out;
}

/** An upstream body the test feeds by hand: chunks arrive only when pushed. */
class Feed implements AsyncIterable<Buffer> {
  private readonly queue: Array<{ chunk?: Buffer; end?: true; error?: Error }> = [];
  private wake?: () => void;

  push(chunk: Buffer): void {
    this.queue.push({ chunk });
    this.poke();
  }

  end(): void {
    this.queue.push({ end: true });
    this.poke();
  }

  error(error: Error): void {
    this.queue.push({ error });
    this.poke();
  }

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    for (;;) {
      while (this.queue.length === 0) await new Promise<void>((resolve) => (this.wake = resolve));
      const item = this.queue.shift()!;
      if (item.error) throw item.error;
      if (item.end) return;
      yield item.chunk!;
    }
  }
}

interface Received {
  chunks: Buffer[];
  bytes: number;
  ended: boolean;
  error?: Error;
  closed: boolean;
  data(): Buffer;
}

/** Consumes a reader in flowing mode and records what it delivered. */
function consume(reader: Readable): Received {
  const r: Received = {
    chunks: [],
    bytes: 0,
    ended: false,
    closed: false,
    data: () => Buffer.concat(r.chunks),
  };
  reader.on('data', (c: Buffer) => {
    r.chunks.push(c);
    r.bytes += c.length;
  });
  reader.on('end', () => (r.ended = true));
  reader.on('error', (e) => (r.error = e));
  reader.on('close', () => (r.closed = true));
  return r;
}

/** Lets the event loop run until `cond` holds (bounded by turns, not by time). */
async function waitFor(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 20_000; i++) {
    if (cond()) return;
    await tick();
  }
  throw new Error(`never happened: ${what}`);
}

async function settle(turns = 50): Promise<void> {
  for (let i = 0; i < turns; i++) await tick();
}

/** File descriptors of this process that point at `path` (Linux). */
function openFdsOf(path: string): string[] {
  return readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false;
    }
  });
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

let spoolDir: string;

beforeEach(async () => {
  spoolDir = await mkdtemp(join(tmpdir(), 'narwhal-download-'));
});

afterEach(async () => {
  await rm(spoolDir, { recursive: true, force: true });
});

describe('NarDownload fan-out', () => {
  it('gives readers created before and after the first chunk identical, complete bytes', async () => {
    const feed = new Feed();
    const download = new NarDownload(KEY, spoolDir, SAMPLE.file.length);
    const early = consume(download.createReader());
    const receiving = download.receive(feed, new NarVerifier(SAMPLE.expect));

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
    const download = new NarDownload(KEY, spoolDir, SAMPLE.file.length);
    const before = consume(download.createReader());
    const receiving = download.receive(feed, new NarVerifier(SAMPLE.expect));
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
    const download = new NarDownload(KEY, spoolDir);
    const receiving = download.receive(feed, new NarVerifier(SAMPLE.expect));
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
    const download = new NarDownload(KEY, spoolDir);
    const receiving = download.receive(feed, new NarVerifier(SAMPLE.expect));
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
    const download = new NarDownload(KEY, spoolDir);
    const receiving = download.receive(feed, new NarVerifier(SAMPLE.expect));
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

  it('hands a reader that keeps up the upstream chunks themselves, without copying them', async () => {
    const raw = rawSample(40 * 16_384 + 123);
    const fed = chunks(raw.file, 16_384).map(ownCopy);
    const feed = new Feed();
    const download = new NarDownload(raw.key, spoolDir, raw.file.length);
    const reader = consume(download.createReader());
    const receiving = download.receive(feed, new NarVerifier(raw.expect));
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
    const download = new NarDownload(raw.key, spoolDir, raw.file.length);
    const receiving = download.receive(feed, new NarVerifier(raw.expect));
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
    expect(shared[0]).toBe(false); // read from the spool
    expect(shared.at(-1)).toBe(true); // caught up: the upstream's own chunk
    await download.finishWriting(false);
  });

  it('gives a reader for a range exactly those bytes, its last one only once the download is verified', async () => {
    const raw = rawSample(100_000);
    const feed = new Feed();
    const download = new NarDownload(raw.key, spoolDir, raw.file.length);
    const ranged = consume(download.createReader({ start: 1000, end: 1999 }));
    const receiving = download.receive(feed, new NarVerifier(raw.expect));
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
    const download = new NarDownload(raw.key, spoolDir, raw.file.length);
    const ranged = consume(download.createReader({ start: 0, end: 9 }));
    const receiving = download.receive(feed, new NarVerifier(raw.expect));
    for (const p of chunks(bad, 4096)) feed.push(p);
    feed.end();
    await expect(receiving).rejects.toThrow(DownloadFailedError);
    await waitFor(() => ranged.error !== undefined || ranged.ended, 'range reader finishes');
    expect(ranged.ended).toBe(false);
    expect(ranged.error).toBeInstanceOf(DownloadFailedError);
    expect(ranged.bytes).toBe(9);
    await download.finishWriting(true);
  });

  it('counts readers while they stream', async () => {
    const feed = new Feed();
    const download = new NarDownload(KEY, spoolDir);
    const a = download.createReader();
    const b = consume(download.createReader());
    expect(download.readerCount).toBe(2);
    const receiving = download.receive(feed, new NarVerifier(SAMPLE.expect));
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

describe('NarDownload failures', () => {
  it('ends every reader with an error, never with end, when verification fails', async () => {
    const feed = new Feed();
    const download = new NarDownload(KEY, spoolDir, SAMPLE.file.length);
    const before = consume(download.createReader());
    // Expect the hashes of other content: the bytes arrive fine but do not verify.
    const receiving = download.receive(
      feed,
      new NarVerifier({ ...OTHER.expect, fileSize: SAMPLE.file.length }),
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
    expect(await exists(download.spoolPath)).toBe(false);
  });

  it('fails readers when the upstream body breaks mid-way', async () => {
    const feed = new Feed();
    const download = new NarDownload(KEY, spoolDir, SAMPLE.file.length);
    const reader = consume(download.createReader());
    const receiving = download.receive(feed, new NarVerifier(SAMPLE.expect));
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
    const download = new NarDownload(KEY, spoolDir, 1000);
    const reader = consume(download.createReader());
    const verifier = new NarVerifier({ compression: 'bzip2' });
    expect(verifier.checksContent).toBe(false);
    const result = download.receive(feed, verifier).then(
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
    const download = new NarDownload(KEY, spoolDir);
    const reader = consume(download.createReader());
    download.fail(new DownloadFailedError('no upstream has it'));
    await waitFor(() => reader.error !== undefined, 'reader errors');
    expect(reader.error!.message).toBe('no upstream has it');
    expect(reader.ended).toBe(false);
    expect(reader.bytes).toBe(0);
    await download.finishWriting(true);
  });
});

describe('NarDownload spool file', () => {
  it('writes the spool in the spool dir with mode 0600 and keeps it for the caller after success', async () => {
    const feed = new Feed();
    const download = new NarDownload(KEY, spoolDir);
    expect(download.spoolPath.startsWith(join(spoolDir, KEY))).toBe(true);
    expect(download.spoolPath.endsWith('.part')).toBe(true);
    const receiving = download.receive(feed, new NarVerifier(SAMPLE.expect));
    feed.push(SAMPLE.file.subarray(0, 100));
    await waitFor(() => download.written === 100, 'first chunk written');
    expect((await stat(download.spoolPath)).mode & 0o777).toBe(0o600);
    feed.push(SAMPLE.file.subarray(100));
    feed.end();
    await receiving;
    expect(sha256Hex(await readFile(download.spoolPath))).toBe(sha256Hex(SAMPLE.file));
    await download.finishWriting(false);
    expect(await exists(download.spoolPath)).toBe(true);
    expect(openFdsOf(download.spoolPath)).toEqual([]);
  });

  it('deletes the spool on finishWriting(true) and closes it once the last reader is done', async () => {
    const feed = new Feed();
    const download = new NarDownload(KEY, spoolDir);
    const reader = download.createReader();
    const receiving = download.receive(feed, new NarVerifier(SAMPLE.expect));
    for (const p of chunks(SAMPLE.file, 50_000)) feed.push(p);
    feed.end();
    await receiving;
    await download.finishWriting(true);
    expect(await exists(download.spoolPath)).toBe(false);
    expect(await readdir(spoolDir)).toEqual([]);
    // The unlinked file stays open for the reader still attached…
    const r = consume(reader);
    await waitFor(() => r.ended || r.error !== undefined, 'reader finishes');
    expect(sha256Hex(r.data())).toBe(sha256Hex(SAMPLE.file));
    // …and is closed after it (closing is asynchronous: wait for it, bounded by event-loop turns).
    await waitFor(
      () => openFdsOf(`${download.spoolPath} (deleted)`).length === 0,
      'spool closed after the last reader',
    );
    expect(openFdsOf(download.spoolPath)).toEqual([]);
  });

  it('deletes the spool of a failed download', async () => {
    const feed = new Feed();
    const download = new NarDownload(KEY, spoolDir);
    const result = download.receive(feed, new NarVerifier(OTHER.expect)).catch((e: unknown) => e);
    feed.push(SAMPLE.file);
    feed.end();
    expect(await result).toBeInstanceOf(DownloadFailedError);
    expect(await exists(download.spoolPath)).toBe(true);
    await download.finishWriting(true);
    expect(await readdir(spoolDir)).toEqual([]);
    expect(openFdsOf(`${download.spoolPath} (deleted)`)).toEqual([]);
  });
});
