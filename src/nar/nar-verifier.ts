import { createHash, type Hash } from 'node:crypto';
import { once } from 'node:events';
import type { Transform } from 'node:stream';
import { NarMismatchError, NarTooLargeError } from '../common/errors';
import type { NarFileEntity } from '../database/entities';
import { isCompression, type Compression } from '../nix/compression';
import { canDecompress, createNarDecompressor } from '../nix/decompress';
import { sha256Nix32 } from '../nix/hash';

export interface NarExpectations {
  compression: Compression;
  /** `sha256:<nix32>` of the bytes as served, when the narinfo has one. */
  fileHash?: string;
  fileSize?: number;
  /** `sha256:<nix32>` of the uncompressed NAR (covered by the upstream signature), when known. */
  narHash?: string;
  narSize?: number;
}

/** True when `expect` lets the content (not only the size) of a NAR be checked. */
export function checksContent(expect: NarExpectations): boolean {
  return (
    expect.fileHash !== undefined ||
    (expect.narHash !== undefined && canDecompress(expect.compression))
  );
}

/**
 * What the bytes of a recorded NAR must match — for a download and for fsck alike: FileHash/FileSize
 * when known, and NarHash/NarSize when a narinfo gave them and the compression can be decoded here.
 */
export function expectationsOf(
  row: Pick<NarFileEntity, 'compression' | 'fileHash' | 'fileSize' | 'narHash' | 'narSize'>,
): NarExpectations {
  // Rows hold only validated compressions; anything else is checked by FileHash alone.
  const c = row.compression;
  const compression: Compression = isCompression(c) ? c : 'none';
  const decodable = isCompression(c) && canDecompress(c);
  const narHash = decodable ? (row.narHash ?? undefined) : undefined;
  return {
    compression,
    fileHash: row.fileHash ?? undefined,
    fileSize: row.fileSize ?? undefined,
    narHash,
    narSize: narHash !== undefined ? (row.narSize ?? undefined) : undefined,
  };
}

/**
 * Checks a NAR while it streams: size and sha256 of the bytes as served (FileSize/FileHash) and, when the
 * compression can be decoded here, size and sha256 of the decompressed NAR (NarHash/NarSize — the
 * values the upstream signature vouches for). `finish` rejects with DownloadFailedError on any mismatch.
 *
 * Bounded: bytes past FileSize, or a decompressed length past NarSize (a "decompression bomb"), fail
 * at once instead of being decoded to the end. On the server this runs in a worker thread
 * (VerifierPool), never on the event loop.
 */
export class NarVerifier {
  private readonly fileHasher: Hash = createHash('sha256');
  private fileBytes = 0;
  private readonly decompressor: Transform | null;
  private readonly narHasher: Hash = createHash('sha256');
  private narBytes = 0;
  private readonly decompressed: Promise<void>;
  /** The decoder is done with a chunk once its write callback runs (see releasesChunks). */
  private readonly decoderCopies: boolean;

  constructor(
    private readonly expect: NarExpectations,
    options: { onThisThread?: boolean } = {},
  ) {
    // Only made when NarHash is checked: the decoder's own integrity check of its output is skipped.
    this.decompressor = expect.narHash
      ? createNarDecompressor(expect.compression, { ...options, outputHashed: true })
      : null;
    const c = expect.compression;
    this.decoderCopies =
      (c === 'xz' && options.onThisThread === true) || c === 'gzip' || c === 'br';
    if (this.decompressor) {
      const d = this.decompressor;
      const limit = expect.narSize;
      d.on('data', (chunk: Buffer) => {
        this.narBytes += chunk.length;
        if (limit !== undefined && this.narBytes > limit) {
          d.destroy(new NarSizeExceededError(limit));
          return;
        }
        this.narHasher.update(chunk);
      });
      this.decompressed = new Promise<void>((resolve, reject) => {
        d.once('end', resolve);
        d.once('error', (e) =>
          reject(
            e instanceof NarSizeExceededError
              ? new NarTooLargeError(e.message)
              : new NarMismatchError(
                  `NAR does not decompress as ${expect.compression}: ${e.message}`,
                ),
          ),
        );
      });
      // Errors surface through `finish` and `failure`; keep an early one from counting as unhandled.
      this.decompressed.catch(() => undefined);
    } else {
      this.decompressed = Promise.resolve();
    }
  }

  /**
   * True when `update` resolves only once the verifier is done with the chunk's bytes, so that the
   * caller may fill the same buffer again (the verifier thread does, instead of allocating one per
   * read). The xz decoder on this thread, gzip and brotli take in all of a chunk before they call it
   * consumed; fzstd keeps parts of its input, and a pass-through may hold a chunk until its reader
   * takes it, so for those every chunk needs a buffer of its own.
   */
  get releasesChunks(): boolean {
    return this.decompressor === null || this.decoderCopies;
  }

  /** True when the content (not only the size) of this NAR is checked. */
  get checksContent(): boolean {
    return checksContent(this.expect);
  }

  get bytes(): number {
    return this.fileBytes;
  }

  /** Decompressed bytes seen so far (at most a decoder's slice past NarSize). */
  get decodedBytes(): number {
    return this.narBytes;
  }

  /** Rejects as soon as the content is known to be wrong before the end (e.g. past NarSize). */
  get failure(): Promise<void> {
    return this.decompressed.then(() => new Promise<void>(() => undefined));
  }

  /**
   * Feeds the next chunk as served; resolves when the decompressor can take more (and, when
   * `releasesChunks`, once it is done with this chunk).
   */
  async update(chunk: Buffer): Promise<void> {
    this.fileBytes += chunk.length;
    if (this.expect.fileSize !== undefined && this.fileBytes > this.expect.fileSize) {
      throw new NarMismatchError(`NAR is longer than its FileSize ${this.expect.fileSize}`);
    }
    this.fileHasher.update(chunk);
    const d = this.decompressor;
    if (d && !d.destroyed && this.decoderCopies) {
      const consumed = new Promise<void>((resolve) => d.write(chunk, () => resolve()));
      await Promise.race([consumed, this.decompressed]);
    } else if (d && !d.destroyed && !d.write(chunk)) {
      await Promise.race([once(d, 'drain'), this.decompressed]);
    }
    if (d?.destroyed) await this.decompressed; // rejects with the reason (e.g. past NarSize)
  }

  /** Call once the last byte arrived. */
  async finish(): Promise<void> {
    const e = this.expect;
    if (e.fileSize !== undefined && this.fileBytes !== e.fileSize) {
      throw new NarMismatchError(`NAR has ${this.fileBytes} bytes, FileSize says ${e.fileSize}`);
    }
    if (e.fileHash !== undefined) {
      const got = `sha256:${sha256Nix32(this.fileHasher.digest())}`;
      if (got !== e.fileHash)
        throw new NarMismatchError(`NAR hashes to ${got}, FileHash says ${e.fileHash}`);
    }
    if (this.decompressor) {
      this.decompressor.end();
      await this.decompressed;
      if (e.narSize !== undefined && this.narBytes !== e.narSize) {
        throw new NarMismatchError(
          `NAR decompresses to ${this.narBytes} bytes, NarSize says ${e.narSize}`,
        );
      }
      const got = `sha256:${sha256Nix32(this.narHasher.digest())}`;
      if (got !== e.narHash)
        throw new NarMismatchError(`NAR content hashes to ${got}, NarHash says ${e.narHash}`);
    }
  }

  /** Abandons verification (download failed). */
  destroy(): void {
    this.decompressor?.destroy();
  }
}

class NarSizeExceededError extends Error {
  constructor(limit: number) {
    super(`NAR decompresses to more than its NarSize ${limit}; stopped`);
  }
}
