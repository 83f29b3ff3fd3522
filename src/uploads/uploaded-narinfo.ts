import { UploadRejectedError } from '../common/errors';
import type { NarInfoEntity } from '../database/entities';
import { parseNarFileName } from '../nix/compression';
import { canDecompress } from '../nix/decompress';
import { quoteForError } from '../nix/errors';
import { narInfoFingerprint } from '../nix/fingerprint';
import { parseNarInfo, type NarInfo } from '../nix/narinfo';
import { parseStorePath } from '../nix/store-path';
import { verifyFingerprint, type PublicKey } from '../signing/keys';

/**
 * An uploaded narinfo, checked for itself: well-formed, for the path its name says, with a FileHash
 * and a URL naming the NAR uploaded under that FileHash, and — when `trustedKeys` are given — signed
 * by one of them. Returns it and the key of its NAR; throws a 4xx error (UploadRejectedError, a
 * NixFormatError for a malformed one) otherwise.
 */
export function parseUploadedNarInfo(
  hash: string,
  text: string,
  { storeDir, trustedKeys }: { storeDir: string; trustedKeys?: PublicKey[] },
): { narInfo: NarInfo; narKey: string } {
  const what = `${hash}.narinfo`;
  const narInfo = parseNarInfo(text, { storeDir }); // 400 when malformed
  if (parseStorePath(narInfo.storePath, storeDir).hash !== hash) {
    throw new UploadRejectedError(`${what} describes another path (${narInfo.storePath})`);
  }
  if (narInfo.fileHash === undefined) {
    throw new UploadRejectedError(`${what} has no FileHash (its NAR is uploaded under it)`);
  }
  const fileHash = narInfo.fileHash.slice('sha256:'.length);
  const name = /^nar\/([^/]+)$/.exec(narInfo.url)?.[1];
  let named: { hash: string } | undefined;
  try {
    named = name === undefined ? undefined : parseNarFileName(name);
  } catch {
    named = undefined;
  }
  if (!named || named.hash !== fileHash || !narInfo.fileHash.startsWith('sha256:')) {
    throw new UploadRejectedError(
      `${what}: URL ${quoteForError(narInfo.url)} is not nar/<FileHash>.nar[.<ext>]`,
    );
  }
  if (!canDecompress(narInfo.compression)) {
    throw new UploadRejectedError(
      `${what}: narwhal cannot decompress ${narInfo.compression} to check NarHash; upload NARs compressed with xz, zstd, br, gzip or none`,
    );
  }
  if (trustedKeys) {
    const fingerprint = narInfoFingerprint(narInfo, storeDir);
    if (!narInfo.sigs.some((s) => verifyFingerprint(s, fingerprint, trustedKeys))) {
      throw new UploadRejectedError(`${what} has no signature by a trusted key`);
    }
  }
  return { narInfo, narKey: name! };
}

/**
 * True when an uploaded narinfo says what the stored one says (its signatures aside: narwhal adds
 * its own, and an upload may carry other ones).
 */
export function sameNarInfo(row: NarInfoEntity, n: NarInfo): boolean {
  const refs = (list: string[]) => [...list].sort().join(' ');
  return (
    row.storePath === n.storePath &&
    row.narHash === n.narHash &&
    row.narSize === n.narSize &&
    (row.fileHash ?? undefined) === n.fileHash &&
    row.compression === n.compression &&
    refs(row.references.map((r) => r.reference)) === refs(n.references) &&
    (row.deriver ?? undefined) === n.deriver &&
    (row.ca ?? undefined) === n.ca
  );
}
