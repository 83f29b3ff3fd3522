import { randomBytes } from 'node:crypto';
import { compress } from 'lzma-native';
import { encodeNix32 } from '../../src/nix/base32';
import { compressionExtension, type Compression } from '../../src/nix/compression';
import { narInfoFingerprint } from '../../src/nix/fingerprint';
import type { NarInfo } from '../../src/nix/narinfo';
import { signFingerprint } from '../../src/signing/keys';
import { sha256Nix32 } from './hash';
import type { TestKey } from './signing-keys';

/**
 * Store paths made in-process: NAR files (xz or uncompressed) and the narinfos describing them,
 * signed with keys made here — what an upstream cache would publish.
 */

export const STORE_DIR = '/nix/store';

/** A random 32-character store path hash part (nix32 of 20 random bytes). */
export function randomHashPart(): string {
  return encodeNix32(randomBytes(20));
}

/** Serializes one regular file as a NAR (`nix-archive-1`), the format Nix streams. */
export function narOfFile(contents: Buffer): Buffer {
  const parts: Buffer[] = [];
  const str = (s: string | Buffer): void => {
    const b = typeof s === 'string' ? Buffer.from(s) : s;
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(b.length));
    parts.push(len, b, Buffer.alloc((8 - (b.length % 8)) % 8));
  };
  for (const s of ['nix-archive-1', '(', 'type', 'regular', 'contents']) str(s);
  str(contents);
  str(')');
  return Buffer.concat(parts);
}

export interface StorePathFixture {
  hash: string;
  storePath: string;
  /** The (compressed) NAR as served by the upstream. */
  file: Buffer;
  /** The uncompressed NAR. */
  nar: Buffer;
  /** nix32 of sha256(file): the file name narwhal must use. */
  fileHash: string;
  /** `<fileHash>.nar.xz` (`.nar` without compression) */
  narName: string;
  narInfo: NarInfo;
}

export interface FixtureOptions {
  name?: string;
  /** Size of the file inside the NAR; random bytes. Default 4 KiB. */
  size?: number;
  references?: string[];
  /** Omit FileHash and FileSize, as attic and nix-serve do. */
  withoutFileHash?: boolean;
  /** Upstream `URL:` value; default `nar/<fileHash>.nar.xz`. */
  url?: string;
  /** Store path written in the narinfo (defaults to the one of `hash`). */
  storePath?: string;
  /** `none` serves the NAR itself; default `xz`. */
  compression?: 'xz' | 'none';
}

/** A store path with an xz NAR; its narinfo is signed by `keys` (may be none). */
export async function makeStorePath(
  keys: TestKey[],
  opts: FixtureOptions = {},
): Promise<StorePathFixture> {
  const hash = randomHashPart();
  const storePath = `${STORE_DIR}/${hash}-${opts.name ?? 'module-test'}`;
  const nar = narOfFile(randomBytes(opts.size ?? 4096));
  const compression = opts.compression ?? 'xz';
  const file = compression === 'xz' ? await compress(nar, { preset: 1 }) : nar;
  const fileHash = sha256Nix32(file);
  const narName = `${fileHash}.nar${compression === 'xz' ? '.xz' : ''}`;
  const narInfo: NarInfo = {
    storePath: opts.storePath ?? storePath,
    url: opts.url ?? `nar/${narName}`,
    compression,
    narHash: `sha256:${sha256Nix32(nar)}`,
    narSize: nar.length,
    references: opts.references ?? [],
    deriver: `${randomHashPart()}-${opts.name ?? 'module-test'}.drv`,
    sigs: [],
  };
  if (!opts.withoutFileHash) {
    narInfo.fileHash = `sha256:${fileHash}`;
    narInfo.fileSize = file.length;
  }
  sign(narInfo, keys);
  return { hash, storePath, file, nar, fileHash, narName, narInfo };
}

/** Replaces the signatures of `n` by fresh ones from `keys`. */
export function sign(n: NarInfo, keys: TestKey[]): NarInfo {
  const fp = narInfoFingerprint(n, STORE_DIR);
  n.sigs = keys.map((k) => signFingerprint(k.secret, fp));
  return n;
}

/**
 * `f` with other bytes as its NAR file (a decompression bomb, a page of HTML…): URL, Compression,
 * FileHash and FileSize describe `file`, the rest of the narinfo (NarHash, NarSize…) is `f`'s
 * unless `changes` says otherwise, and it is signed again by `keys`.
 */
export function withFile(
  f: StorePathFixture,
  file: Buffer,
  compression: Compression,
  keys: TestKey[],
  changes: Partial<NarInfo> = {},
): StorePathFixture {
  const fileHash = sha256Nix32(file);
  const narName = `${fileHash}.nar${compressionExtension(compression)}`;
  const narInfo: NarInfo = {
    ...f.narInfo,
    url: `nar/${narName}`,
    compression,
    fileHash: `sha256:${fileHash}`,
    fileSize: file.length,
    ...changes,
  };
  sign(narInfo, keys);
  return { ...f, file, fileHash, narName, narInfo };
}
