import { execFileSync } from 'node:child_process';

/**
 * Decompression bombs: tiny compressed files that expand to far more than any NarSize they are
 * served with. Built here rather than shipped.
 */

const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
const ZSTD_BLOCK = 128 * 1024;

/**
 * A zstd frame of RLE blocks (4 bytes each, 128 KiB of one byte each) that decodes to `size` bytes of
 * `byte`: 4 GiB take 128 KiB. Built by hand from the zstd format (RFC 8878), no compressor needed.
 */
export function zstdBomb(size: number, byte = 0x61): Buffer {
  const blocks = Math.ceil(size / ZSTD_BLOCK);
  // Frame header: descriptor 0 (no content size, not single-segment), window descriptor 2^24.
  const out = Buffer.alloc(ZSTD_MAGIC.length + 2 + blocks * 4);
  ZSTD_MAGIC.copy(out, 0);
  out[4] = 0x00;
  out[5] = 0x70;
  let off = 6;
  for (let i = 0; i < blocks; i++) {
    const len = Math.min(ZSTD_BLOCK, size - i * ZSTD_BLOCK);
    const last = i === blocks - 1 ? 1 : 0;
    const header = (len << 3) | (1 << 1) | last; // Block_Type 1: RLE
    out.writeUIntLE(header, off, 3);
    out[off + 3] = byte;
    off += 4;
  }
  return out;
}

/** `size` zero bytes compressed with the real xz (a bomb of about 1/7000 of its size). */
export function xzBomb(size: number): Buffer {
  return execFileSync('sh', ['-c', `head -c ${size} /dev/zero | xz -c -0`], {
    maxBuffer: 64 << 20,
  });
}
