// Minimal typings for the part of lzma-native that narwhal uses (the package ships none).
// Its streams come from the readable-stream package, not node:stream; decompress.ts wraps them.
declare module 'lzma-native' {
  import type { EventEmitter } from 'node:events';

  export interface LzmaOptions {
    /** Memory limit for the decoder, in bytes. */
    memlimit?: number;
    /** Decode on the calling thread instead of a worker thread. */
    synchronous?: boolean;
    /** liblzma's decoder flags (e.g. LZMA_IGNORE_CHECK); 0 when absent. */
    flags?: number;
  }

  /** The readable-stream (v3) Transform lzma-native returns, as far as narwhal uses it. */
  export interface LzmaStream extends EventEmitter {
    write(chunk: Buffer, callback: (err?: Error | null) => void): boolean;
    end(): void;
    pause(): void;
    resume(): void;
    destroy(err?: Error): void;
    /** Releases the native decoder (lzma-native calls it itself after the last chunk or an error). */
    cleanup(): void;
  }

  /** An auto-detecting (.xz / .lzma) streaming decoder; concatenated .xz streams are accepted. */
  export function createDecompressor(options?: LzmaOptions): LzmaStream;

  /**
   * The native coder under lzma-native's streams. Synchronous `code` calls `bufferHandler` before
   * it returns: once per output buffer, then `(null, undefined, err)` at the end of the data or on
   * an error (`err` null at the end), then `(undefined, chunks)` for the input it consumed.
   */
  export class Stream {
    /** An auto-detecting decoder; `flags` are liblzma's decoder flags (e.g. LZMA_CONCATENATED). */
    autoDecoder(options: { memlimit?: number | null; flags?: number }): void;
    /** Feeds `input` (null: the end of the input) and codes it, here (`async` false) or on a thread. */
    code(input: Buffer | null, async: boolean): void;
    bufferHandler: (
      buf: Buffer | null | undefined,
      processedChunks: number | undefined,
      err: Error | null | undefined,
    ) => void;
    /** Ends the native coder (lzma_end); the stream is unusable afterwards. */
    resetUnderlying(): void;
  }
}
