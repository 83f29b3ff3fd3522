/**
 * The text a narinfo signature covers:
 * `1;<StorePath>;<NarHash as sha256:nix32>;<NarSize>;<full reference paths, sorted, comma-joined>`.
 */
import { NarInfoParseError } from './errors';
import { normalizeSha256 } from './hash';
import type { NarInfo } from './narinfo';
import { parseStorePath, storePathOf } from './store-path';

export function narInfoFingerprint(
  n: Pick<NarInfo, 'storePath' | 'narHash' | 'narSize' | 'references'>,
  storeDir: string,
): string {
  parseStorePath(n.storePath, storeDir);
  if (!Number.isSafeInteger(n.narSize) || n.narSize <= 0) {
    // Nix refuses too: a fingerprint without a known size would sign nothing useful.
    throw new NarInfoParseError('must be a positive integer to compute a fingerprint', 'NarSize');
  }
  const refs = n.references.map((ref) => storePathOf(ref, storeDir)).sort();
  return `1;${n.storePath};${normalizeSha256(n.narHash)};${n.narSize};${refs.join(',')}`;
}
