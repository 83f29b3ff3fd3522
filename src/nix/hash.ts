/**
 * Hashes as Nix writes them: `<algo>:<nix32|hex|base64>` or SRI `<algo>-<base64>`.
 * The canonical form narwhal writes (narinfo, fingerprints) is `<algo>:<nix32>`.
 */
import { decodeNix32, encodeNix32, nix32Length } from './base32';
import { InvalidHashError, quoteForError } from './errors';

export type HashAlgo = 'sha256' | 'sha512' | 'sha1' | 'md5';

export interface NixHash {
  algo: HashAlgo;
  digest: Buffer;
}

export const HASH_SIZES: Readonly<Record<HashAlgo, number>> = {
  md5: 16,
  sha1: 20,
  sha256: 32,
  sha512: 64,
};

function isHashAlgo(s: string): s is HashAlgo {
  return Object.prototype.hasOwnProperty.call(HASH_SIZES, s);
}

const HEX = /^[0-9a-fA-F]*$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Strict base64: only the standard alphabet, canonical padding and trailing bits. */
function decodeBase64Strict(s: string, padded: boolean): Buffer | undefined {
  if (!BASE64.test(s)) return undefined;
  if (padded && s.length % 4 !== 0) return undefined;
  const bytes = Buffer.from(s, 'base64');
  const canonical = bytes.toString('base64');
  const given = padded ? s : s.padEnd(Math.ceil(s.length / 4) * 4, '=');
  return canonical === given ? bytes : undefined;
}

/** Decodes the digest text of an `<algo>:` hash, choosing the encoding by length as Nix does. */
function decodeDigest(algo: HashAlgo, text: string, whole: string): Buffer {
  const size = HASH_SIZES[algo];
  if (text.length === size * 2 && HEX.test(text)) {
    return Buffer.from(text, 'hex');
  }
  if (text.length === nix32Length(size)) {
    return decodeNix32(text);
  }
  if (text.length === Math.ceil(size / 3) * 4) {
    const bytes = decodeBase64Strict(text, true);
    if (bytes !== undefined && bytes.length === size) return bytes;
  }
  throw new InvalidHashError(`invalid ${algo} hash ${quoteForError(whole)}`);
}

/**
 * Parses `sha256:<nix32>`, `sha256:<hex>`, `sha256:<base64>` or SRI `sha256-<base64>` (and the
 * same for sha512, sha1, md5). Throws InvalidHashError for anything else, including a digest of the
 * wrong length for its algorithm.
 */
export function parseNixHash(s: string): NixHash {
  const sri = /^([a-z0-9]+)-(.*)$/.exec(s);
  const typed = /^([a-z0-9]+):(.*)$/.exec(s);
  const match = typed ?? sri;
  if (match === null) {
    throw new InvalidHashError(`hash ${quoteForError(s)} lacks an algorithm prefix`);
  }
  const [, algo, text] = match;
  if (!isHashAlgo(algo)) {
    throw new InvalidHashError(`unsupported hash algorithm in ${quoteForError(s)}`);
  }
  if (typed !== null) {
    return { algo, digest: decodeDigest(algo, text, s) };
  }
  // SRI: base64 only; Nix also accepts it without padding.
  const digest = decodeBase64Strict(text, false);
  if (digest === undefined || digest.length !== HASH_SIZES[algo]) {
    throw new InvalidHashError(`invalid ${algo} SRI hash ${quoteForError(s)}`);
  }
  return { algo, digest };
}

/** `<algo>:<nix32>`, the form narinfo and fingerprints use. */
export function formatNixHash(h: NixHash): string {
  return `${h.algo}:${encodeNix32(h.digest)}`;
}

/** `<algo>-<base64>` (SRI), the form newer Nix prints in JSON. */
export function formatSriHash(h: NixHash): string {
  return `${h.algo}-${h.digest.toString('base64')}`;
}

/** nix32 text of a sha256 digest (52 characters), e.g. for `nar/<hash>.nar` file names. */
export function sha256Nix32(digest: Buffer): string {
  if (digest.length !== HASH_SIZES.sha256) {
    throw new InvalidHashError(`a sha256 digest has 32 bytes, not ${digest.length}`);
  }
  return encodeNix32(digest);
}

/**
 * Parses any accepted sha256 form and returns it as `sha256:<nix32>`. Other algorithms are
 * rejected: NarHash and FileHash must be sha256 for fingerprints and file names.
 */
export function normalizeSha256(s: string): string {
  const h = parseNixHash(s);
  if (h.algo !== 'sha256') {
    throw new InvalidHashError(`expected a sha256 hash, got ${h.algo}`);
  }
  return formatNixHash(h);
}
