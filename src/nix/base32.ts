/**
 * Nix's own base-32 ("nix32"), used for store path hash parts and `sha256:` hashes in narinfo.
 *
 * It is not RFC 4648: the alphabet omits e, o, t and u, and the digest is read from its last byte
 * first, so the first character of the text carries the most significant bits of the last byte.
 * Character i (from the right) holds bits 5i .. 5i+4 of the digest seen as one little-endian number.
 */
import { InvalidHashError, quoteForError } from './errors';

export const NIX32_ALPHABET = '0123456789abcdfghijklmnpqrsvwxyz';

const DIGIT_OF: ReadonlyMap<string, number> = new Map(
  Array.from(NIX32_ALPHABET, (char, digit) => [char, digit] as const),
);

/** Length in characters of the nix32 text for `byteLength` bytes. */
export function nix32Length(byteLength: number): number {
  return Math.ceil((byteLength * 8) / 5);
}

export function encodeNix32(bytes: Uint8Array): string {
  const length = nix32Length(bytes.length);
  let out = '';
  for (let n = length - 1; n >= 0; n--) {
    const bit = n * 5;
    const i = bit >> 3;
    const j = bit & 7;
    const low = bytes[i] >> j;
    const high = i + 1 < bytes.length ? bytes[i + 1] << (8 - j) : 0;
    out += NIX32_ALPHABET[(low | high) & 0x1f];
  }
  return out;
}

/**
 * Decodes nix32 text. The byte length follows from the text length; lengths no byte count
 * produces, characters outside the alphabet and set bits beyond the last byte are rejected, as
 * Nix rejects them.
 */
export function decodeNix32(s: string): Buffer {
  const byteLength = Math.floor((s.length * 5) / 8);
  if (nix32Length(byteLength) !== s.length) {
    throw new InvalidHashError(`invalid nix32 length ${s.length} in ${quoteForError(s)}`);
  }
  const out = Buffer.alloc(byteLength);
  for (let k = 0; k < s.length; k++) {
    const digit = DIGIT_OF.get(s[k]);
    if (digit === undefined) {
      throw new InvalidHashError(
        `invalid nix32 character ${quoteForError(s[k])} in ${quoteForError(s)}`,
      );
    }
    const bit = (s.length - 1 - k) * 5;
    const i = bit >> 3;
    const j = bit & 7;
    out[i] |= (digit << j) & 0xff;
    const carry = digit >> (8 - j);
    if (i + 1 < byteLength) {
      out[i + 1] |= carry;
    } else if (carry !== 0) {
      throw new InvalidHashError(
        `nix32 text ${quoteForError(s)} has bits beyond its ${byteLength} bytes`,
      );
    }
  }
  return out;
}

/**
 * True if `s` is non-empty, decodes as nix32 and, when `length` is given, is exactly `length`
 * characters long.
 */
export function isNix32(s: string, length?: number): boolean {
  if (s.length === 0 || (length !== undefined && s.length !== length)) return false;
  try {
    decodeNix32(s);
    return true;
  } catch {
    return false;
  }
}
