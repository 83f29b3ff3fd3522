/**
 * The narinfo `Compression` field and the `nar/<filehash>.nar[.<ext>]` file names derived from it.
 *
 * The client picks its decompressor from `Compression`, never from a URL's extension, so the
 * extension here only matters for the file names narwhal itself serves.
 */
import { isNix32 } from './base32';
import { InvalidNarNameError, NarInfoParseError, quoteForError } from './errors';

export type Compression = 'none' | 'xz' | 'zstd' | 'bzip2' | 'br' | 'lz4' | 'lzip' | 'gzip';

const EXTENSIONS: Readonly<Record<Compression, string>> = {
  none: '',
  xz: '.xz',
  zstd: '.zst',
  bzip2: '.bz2',
  br: '.br',
  lz4: '.lz4',
  lzip: '.lzip',
  gzip: '.gz',
};

export const COMPRESSIONS: readonly Compression[] = Object.keys(EXTENSIONS) as Compression[];

const BY_EXTENSION: ReadonlyMap<string, Compression> = new Map(
  COMPRESSIONS.map((c) => [EXTENSIONS[c], c] as const),
);

export function isCompression(s: string): s is Compression {
  return Object.prototype.hasOwnProperty.call(EXTENSIONS, s);
}

/**
 * Parses a narinfo `Compression` value. A missing or empty value means bzip2, as in Nix (it was
 * the default before the field existed).
 */
export function parseCompression(s: string | undefined): Compression {
  if (s === undefined || s === '') return 'bzip2';
  if (!isCompression(s)) {
    throw new NarInfoParseError(`unknown compression ${quoteForError(s)}`, 'Compression');
  }
  return s;
}

/**
 * The file extension narwhal uses after `.nar`. Note: Nix 2.8's own file:// and s3:// stores name
 * gzip NARs plain `.nar`; narwhal uses `.gz` so the name says what the bytes are.
 */
export function compressionExtension(c: Compression): string {
  return EXTENSIONS[c];
}

/** `<hashNix32>.nar<ext>`, e.g. `1dj8….nar.xz`. */
export function narFileName(hashNix32: string, c: Compression): string {
  if (!isNix32(hashNix32, 52)) {
    throw new InvalidNarNameError(
      `NAR file hash ${quoteForError(hashNix32)} is not 52 nix32 characters`,
    );
  }
  return `${hashNix32}.nar${EXTENSIONS[c]}`;
}

/**
 * Parses a NAR file name as requested under `nar/`: `<52 nix32 chars>.nar` optionally followed by
 * one of the known extensions. Anything else (other characters, path separators, `..`, unknown or
 * doubled extensions) throws InvalidNarNameError, so the result is safe to use as a storage key.
 */
export function parseNarFileName(name: string): { hash: string; compression: Compression } {
  const match = /^([0-9a-z]{52})\.nar((?:\.[a-z0-9]+)?)$/.exec(name);
  const compression = match === null ? undefined : BY_EXTENSION.get(match[2]);
  if (match === null || compression === undefined || !isNix32(match[1], 52)) {
    throw new InvalidNarNameError(`invalid NAR file name ${quoteForError(name)}`);
  }
  return { hash: match[1], compression };
}
