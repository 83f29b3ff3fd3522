import { createHash, type BinaryLike } from 'node:crypto';
import type { Readable } from 'node:stream';
import { encodeNix32 } from '../../src/nix/base32';

/** The sha256 digests the suites compare bytes by, in the forms they need. */

export function sha256(data: BinaryLike): Buffer {
  return createHash('sha256').update(data).digest();
}

/** nix32 of sha256(data): the hash in a NAR file name. */
export function sha256Nix32(data: BinaryLike): string {
  return encodeNix32(sha256(data));
}

/** `sha256:<nix32>`, the form of a narinfo's FileHash and NarHash. */
export function nixSha256(data: BinaryLike): string {
  return `sha256:${sha256Nix32(data)}`;
}

export function sha256Hex(data: BinaryLike): string {
  return sha256(data).toString('hex');
}

/** sha256 (hex) of everything `stream` yields, without holding it in memory. */
export async function sha256HexOf(stream: Readable): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of stream as AsyncIterable<Buffer>) hash.update(chunk);
  return hash.digest('hex');
}
