import { createHash, type Hash } from 'node:crypto';
import { once } from 'node:events';
import type { Readable, Transform } from 'node:stream';
import { NarMismatchError } from '../common/errors';
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
 * values the upstream signature vouches for). `finish` rejects with NarMismatchError (a
 * DownloadFailedError) on any mismatch.
 */
export class NarVerifier {
  private readonly fileHasher: Hash = createHash('sha256');
  private fileBytes = 0;
  private readonly decompressor: Transform | null;
  private readonly narHasher: Hash = createHash('sha256');
  private narBytes = 0;
  private readonly decompressed: Promise<void>;
  /** Set when the decompressor reads from its own source instead of `update`. */
  private detached = false;

  constructor(private readonly expect: NarExpectations) {
    this.decompressor = expect.narHash ? createNarDecompressor(expect.compression) : null;
    if (this.decompressor) {
      const d = this.decompressor;
      d.on('data', (chunk: Buffer) => {
        this.narBytes += chunk.length;
        this.narHasher.update(chunk);
      });
      this.decompressed = new Promise<void>((resolve, reject) => {
        d.once('end', resolve);
        d.once('error', (e) =>
          reject(
            new NarMismatchError(`NAR does not decompress as ${expect.compression}: ${e.message}`),
          ),
        );
      });
      // Errors surface through `finish`; keep an early one from counting as unhandled.
      this.decompressed.catch(() => undefined);
    } else {
      this.decompressed = Promise.resolve();
    }
  }

  /** True when the content (not only the size) of this NAR is checked. */
  get checksContent(): boolean {
    return this.expect.fileHash !== undefined || this.decompressor !== null;
  }

  get bytes(): number {
    return this.fileBytes;
  }

  /** True when NarHash is checked by decompressing (and so `detach` is useful). */
  get decompresses(): boolean {
    return this.decompressor !== null;
  }

  /**
   * Feeds the decompressor from `source` (the same bytes, e.g. re-read from the spool file) instead
   * of from `update`, so that a slow decompressor does not slow the download down; `finish` then
   * waits for `source` to end. Call before the first `update`.
   */
  detach(source: Readable): void {
    const d = this.decompressor;
    if (!d) return;
    this.detached = true;
    source.once('error', (e) => d.destroy(e));
    source.pipe(d);
  }

  /** Feeds the next chunk as served; resolves when the decompressor can take more. */
  async update(chunk: Buffer): Promise<void> {
    this.fileBytes += chunk.length;
    if (this.expect.fileSize !== undefined && this.fileBytes > this.expect.fileSize) {
      throw new NarMismatchError(`NAR is longer than its FileSize ${this.expect.fileSize}`);
    }
    this.fileHasher.update(chunk);
    const d = this.detached ? null : this.decompressor;
    if (d && !d.destroyed && !d.write(chunk)) {
      await Promise.race([once(d, 'drain'), this.decompressed]);
    }
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
      if (!this.detached) this.decompressor.end();
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
