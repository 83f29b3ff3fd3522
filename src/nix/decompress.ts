/**
 * Streaming decompressors for NAR files, chosen by the narinfo `Compression` field.
 *
 * Used to check a NAR against its NarHash (and to serve uncompressed NARs). Every decoder reports
 * truncated or corrupt input as a stream 'error'; none of them ends cleanly on bad data.
 */
import { PassThrough, Transform, type TransformCallback } from 'node:stream';
import * as zlib from 'node:zlib';
import { Decompress } from 'fzstd';
import { type LzmaStream, Stream as NativeLzmaStream, createDecompressor } from 'lzma-native';
import type { Compression } from './compression';

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/**
 * Input is handed to the xz and zstd decoders in slices, and the next slice waits while our output
 * buffer is full, so a small but highly compressed input (a "decompression bomb" from a hostile
 * upstream) cannot inflate into memory faster than the consumer reads. Worst case held per stream:
 * one slice's expansion, measured ≈ 27 MB for xz (4 KiB × ~7000) and ≈ 8 MB for zstd (256 B ×
 * ~32000). node:zlib (gzip, br) already pauses mid-chunk on its own.
 */
const XZ_SLICE = 4096;
const ZSTD_SLICE = 256;

/** xz slices being decoded on lzma-native's own threads right now. */
let asyncXzSlices = 0;
let idleWaiters: (() => void)[] = [];

function settleAsyncXzSlice(): void {
  asyncXzSlices--;
  if (asyncXzSlices > 0) return;
  const waiters = idleWaiters;
  idleWaiters = [];
  for (const w of waiters) w();
}

/**
 * Resolves once no xz slice is being decoded on lzma-native's threads (or after `timeoutMs`).
 * lzma-native aborts the whole process ("terminate called after throwing an instance of
 * 'Napi::Error'") when it exits while one of its threads is still decoding — a decoder destroyed
 * mid-way lets its current slice finish in the background. Whoever ends a process that may have
 * used asynchronous xz decoders (the test runner's workers) waits for this first.
 */
export function asyncXzIdle(timeoutMs = 2_000): Promise<void> {
  if (asyncXzSlices <= 0) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    idleWaiters.push(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * xz on lzma-native's own threads: its decoder (a readable-stream v3 Transform, not a
 * node:stream one) behind a real node:stream Transform, so callers get one stream family:
 * `instanceof Transform`, the same destroy semantics, and backpressure (the inner decoder is paused
 * while our buffer is full; it then stops taking input, which holds back our write callback).
 */
class XzDecompressStream extends Transform {
  private readonly inner: LzmaStream;
  private onInnerEnd: TransformCallback | undefined;
  /** An asynchronous slice is being decoded on lzma-native's threads. */
  private sliceInFlight = false;
  /** Destroyed while a slice was in flight: release the native decoder once it is back. */
  private releaseWhenBack = false;

  constructor(flags: number) {
    super();
    this.inner = createDecompressor({ synchronous: false, flags });
    this.inner.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) this.inner.pause();
    });
    this.inner.on('end', () => this.onInnerEnd?.());
    this.inner.on('error', (err: Error) => this.destroy(err));
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    let offset = 0;
    const next = (err?: Error | null): void => {
      if (err) return callback(err);
      if (offset >= chunk.length) return callback();
      const slice = chunk.subarray(offset, offset + XZ_SLICE);
      offset += slice.length;
      asyncXzSlices++;
      this.sliceInFlight = true;
      this.inner.write(slice, (e?: Error | null) => {
        this.sliceInFlight = false;
        if (this.releaseWhenBack) this.inner.cleanup();
        settleAsyncXzSlice();
        next(e);
      });
    };
    next();
  }

  override _flush(callback: TransformCallback): void {
    this.onInnerEnd = callback;
    this.inner.end();
  }

  override _read(size: number): void {
    this.inner.resume();
    super._read(size);
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.inner.destroy();
    // Release the native decoder now rather than when it is garbage-collected (a process that ends
    // with one still held can be aborted by lzma-native); not while a slice is being decoded.
    if (this.sliceInFlight) this.releaseWhenBack = true;
    else this.inner.cleanup();
    callback(err);
  }
}

/** liblzma's LZMA_CONCATENATED: decode every .xz stream of the input, as `xz -d` does. */
const LZMA_CONCATENATED = 0x08;
/** liblzma's LZMA_IGNORE_CHECK: skip the .xz integrity check (CRC64 here) of the decoded data. */
const LZMA_IGNORE_CHECK = 0x10;

/**
 * xz on the calling thread, through lzma-native's native coder directly: its stream wrapper takes
 * two turns of the event loop (setImmediate) for every slice, which made decoding 4 KiB slices
 * ~460 ms for 64 MiB of incompressible xz on the development machine, ~270 ms this way — the
 * difference between a verifier thread keeping up with a 100 MB/s download and falling behind it.
 * The slices and their bound are the same as XzDecompressStream's; the output of a slice waits
 * here, not in the readable buffer, while the reader is full.
 */
class SyncXzDecompressStream extends Transform {
  private coder: NativeLzmaStream | null;
  /** Output of the last slice that the reader has not taken yet. */
  private held: Buffer[] = [];
  private failure: Error | null = null;
  private atEnd = false;
  /** Continues a chunk whose decoding stopped for a full reader. */
  private continueChunk: (() => void) | null = null;

  constructor(flags: number) {
    super();
    const coder = new NativeLzmaStream();
    coder.autoDecoder({ memlimit: null, flags: LZMA_CONCATENATED | flags });
    coder.bufferHandler = (buf, _chunks, err) => {
      if (err) this.failure = asError(err);
      else if (buf) this.held.push(buf);
      else if (buf === null) this.atEnd = true;
    };
    this.coder = coder;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    let offset = 0;
    const step = (): void => {
      while (this.handOver()) {
        if (this.coder === null) return; // destroyed
        if (offset >= chunk.length) return callback();
        const slice = chunk.subarray(offset, offset + XZ_SLICE);
        offset += slice.length;
        this.coder.code(slice, false);
        if (this.failure) return callback(this.failure);
      }
      this.continueChunk = step;
    };
    step();
  }

  override _flush(callback: TransformCallback): void {
    if (this.coder === null) return callback();
    this.coder.code(null, false);
    if (this.failure) return callback(this.failure);
    if (!this.atEnd) return callback(new Error('xz: the input ended inside a stream'));
    // What is left of the last slice is pushed regardless of the reader (at most one slice's output).
    for (const b of this.held) this.push(b);
    this.held = [];
    callback();
  }

  override _read(size: number): void {
    super._read(size);
    const next = this.continueChunk;
    this.continueChunk = null;
    next?.();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.held = [];
    this.coder?.resetUnderlying();
    this.coder = null;
    callback(err);
  }

  /** Pushes held output while the reader takes it; false once it is full (some may stay held). */
  private handOver(): boolean {
    while (this.held.length > 0) {
      if (!this.push(this.held.shift())) return false;
    }
    return true;
  }
}

/**
 * fzstd's push-based `Decompress` as a Node Transform. fzstd is pure JavaScript (Node 20 has no
 * zstd in zlib); it does not verify zstd's optional content checksum, so callers must still check
 * NarHash.
 */
class ZstdDecompressStream extends Transform {
  private readonly decoder: Decompress;
  private sawInput = false;
  private pushed = false;
  /** The chunk being decoded slice by slice, while we wait for the reader. */
  private pending: { chunk: Buffer; offset: number; callback: TransformCallback } | undefined;

  constructor() {
    super();
    this.decoder = new Decompress((chunk) => {
      // fzstd may reuse its window buffer; hand downstream a copy.
      if (chunk.length > 0 && !this.destroyed) {
        this.pushed = true;
        this.push(Buffer.from(chunk));
      }
    });
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (chunk.length > 0) this.sawInput = true;
    this.pending = { chunk, offset: 0, callback };
    this.pump();
  }

  /**
   * Decodes slices of the pending chunk until it is done, or until our output buffer is full after
   * at least one push: a `_read` that pushes nothing would leave the stream waiting forever.
   */
  private pump(): void {
    const job = this.pending;
    if (job === undefined) return;
    this.pushed = false;
    try {
      while (job.offset < job.chunk.length) {
        if (this.destroyed) return; // e.g. by a consumer that saw enough (past NarSize)
        if (this.pushed && this.readableLength >= this.readableHighWaterMark) return; // see _read
        const end = Math.min(job.offset + ZSTD_SLICE, job.chunk.length);
        this.decoder.push(job.chunk.subarray(job.offset, end));
        job.offset = end;
      }
      this.pending = undefined;
      job.callback();
    } catch (err) {
      this.pending = undefined;
      job.callback(asError(err));
    }
  }

  override _read(size: number): void {
    super._read(size);
    this.pump();
  }

  override _flush(callback: TransformCallback): void {
    try {
      // fzstd accepts an empty input as zero frames; the zstd tool and Nix do not.
      if (!this.sawInput) throw new Error('zstd: empty input');
      this.decoder.push(new Uint8Array(0), true);
      callback();
    } catch (err) {
      callback(asError(err));
    }
  }
}

/**
 * A fresh streaming decompressor for `c`, or null when narwhal cannot decode it (bzip2, lz4,
 * lzip): such NARs can only be passed through unverified.
 *
 * `onThisThread`: decode xz on the calling thread rather than on lzma-native's own threads — what a
 * worker thread wants (it exists to do that work, and lzma-native aborts the whole process when a
 * worker is terminated while one of its own threads is still decoding).
 *
 * `outputHashed`: the caller checks the decoded bytes against a cryptographic hash (a NarHash), so
 * the format's own integrity check of them is redundant and skipped. For xz this is liblzma's
 * CRC64, which bundled liblzma 5.2.3 computes at ~300 MB/s on the development machine: decoding
 * and hashing the bench's 64 MiB `.nar.xz` (random bytes, stored chunks) took 317 ms with it and
 * 110 ms without. A corrupt stream still fails: as a decoding error, or as a NarHash mismatch.
 */
export function createNarDecompressor(
  c: Compression,
  options: { onThisThread?: boolean; outputHashed?: boolean } = {},
): Transform | null {
  switch (c) {
    case 'none':
      return new PassThrough();
    case 'xz': {
      const flags = options.outputHashed === true ? LZMA_IGNORE_CHECK : 0;
      return options.onThisThread === true
        ? new SyncXzDecompressStream(flags)
        : new XzDecompressStream(flags);
    }
    case 'zstd':
      return new ZstdDecompressStream();
    case 'br':
      return zlib.createBrotliDecompress();
    case 'gzip':
      return zlib.createGunzip();
    case 'bzip2':
    case 'lz4':
    case 'lzip':
      return null;
  }
}

/** True if createNarDecompressor(c) returns a decoder. */
export function canDecompress(c: Compression): boolean {
  return c !== 'bzip2' && c !== 'lz4' && c !== 'lzip';
}
