/**
 * Streaming decompressors for NAR files, chosen by the narinfo `Compression` field.
 *
 * Used to check a NAR against its NarHash (and to serve uncompressed NARs). Every decoder reports
 * truncated or corrupt input as a stream 'error'; none of them ends cleanly on bad data.
 */
import { PassThrough, Transform, type TransformCallback } from 'node:stream';
import * as zlib from 'node:zlib';
import { Decompress } from 'fzstd';
import { type LzmaStream, createDecompressor } from 'lzma-native';
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
 * lzma-native's decoder (a readable-stream v3 Transform, not a node:stream one) behind a real
 * node:stream Transform, so callers get one stream family: `instanceof Transform`, the same
 * destroy semantics, and backpressure (the inner decoder is paused while our buffer is full; it
 * then stops taking input, which holds back our write callback).
 */
class XzDecompressStream extends Transform {
  private readonly inner: LzmaStream;
  private onInnerEnd: TransformCallback | undefined;
  /** An asynchronous slice is being decoded on lzma-native's threads. */
  private sliceInFlight = false;
  /** Destroyed while a slice was in flight: release the native decoder once it is back. */
  private releaseWhenBack = false;

  constructor(private readonly synchronous: boolean) {
    super();
    this.inner = createDecompressor({ synchronous });
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
      if (this.synchronous) {
        this.inner.write(slice, next);
        return;
      }
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
 */
export function createNarDecompressor(
  c: Compression,
  options: { onThisThread?: boolean } = {},
): Transform | null {
  switch (c) {
    case 'none':
      return new PassThrough();
    case 'xz':
      return new XzDecompressStream(options.onThisThread === true);
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
