/**
 * `file` (one .xz stream with one block and a CRC64 check) with that check changed: the data
 * decodes as before, only xz's own integrity check fails. The stream footer's Backward Size gives
 * the index's length; the block's check is the 8 bytes before the index.
 */
export function withWrongCrc64(file: Buffer): Buffer {
  const out = Buffer.from(file);
  const indexBytes = (out.readUInt32LE(out.length - 8) + 1) * 4;
  out[out.length - 12 - indexBytes - 8] ^= 0xff;
  return out;
}
