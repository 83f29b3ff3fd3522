import { describe, expect, it } from 'vitest';
import {
  COMPRESSIONS,
  type Compression,
  compressionExtension,
  narFileName,
  parseCompression,
  parseNarFileName,
} from './compression';
import { InvalidNarNameError, NarInfoParseError } from './errors';

const FILE_HASH = '1dj881h51cx0jzblhskrwhgymdgsvm3jqn5rk7zjzw4z8vhzyn0b';

describe('parseCompression', () => {
  it.each(['none', 'xz', 'zstd', 'bzip2', 'br', 'lz4', 'lzip', 'gzip'])('accepts %s', (c) => {
    expect(parseCompression(c)).toBe(c);
  });

  it('treats a missing or empty value as bzip2, as Nix does', () => {
    expect(parseCompression(undefined)).toBe('bzip2');
    expect(parseCompression('')).toBe('bzip2');
  });

  it.each(['zst', 'XZ', 'bz2', 'gz', 'grzip', 'xz ', 'brotli'])('rejects %j', (c) => {
    expect(() => parseCompression(c)).toThrow(NarInfoParseError);
  });
});

describe('NAR file names', () => {
  const extensions: [Compression, string][] = [
    ['none', ''],
    ['xz', '.xz'],
    ['zstd', '.zst'],
    ['bzip2', '.bz2'],
    ['br', '.br'],
    ['lz4', '.lz4'],
    ['lzip', '.lzip'],
    ['gzip', '.gz'],
  ];

  it('covers every compression', () => {
    expect(extensions.map(([c]) => c).sort()).toEqual([...COMPRESSIONS].sort());
  });

  it.each(extensions)('%s uses the extension %j and round-trips', (c, ext) => {
    expect(compressionExtension(c)).toBe(ext);
    const name = narFileName(FILE_HASH, c);
    expect(name).toBe(`${FILE_HASH}.nar${ext}`);
    expect(parseNarFileName(name)).toEqual({ hash: FILE_HASH, compression: c });
  });

  it('matches the names Nix 2.8 writes for xz, zstd, br and none', () => {
    expect(
      parseNarFileName('0j4mhm2081lfnw9zgf6c1rsafb6c801qgh2hhvbryxg0a5wr12rk.nar.xz').compression,
    ).toBe('xz');
    expect(
      parseNarFileName('11imkckc7l6jbbqwpxs00hxqd9hnx9f0acdixlimw30sbv2fv7br.nar.zst').compression,
    ).toBe('zstd');
    expect(
      parseNarFileName('0wz57x08bcbisd1zgf9z8inzdlhsz18mi3jml9srd93fi73kb6fs.nar.br').compression,
    ).toBe('br');
    expect(
      parseNarFileName('1j5gcjwkb88ph829gnppixgd37kqr1lqab3gfz6afcmkpxhykq5g.nar').compression,
    ).toBe('none');
  });

  it('refuses to build a name from a bad hash', () => {
    expect(() => narFileName('../../etc/passwd', 'xz')).toThrow(InvalidNarNameError);
    expect(() => narFileName(FILE_HASH.slice(1), 'xz')).toThrow(InvalidNarNameError);
  });

  it.each([
    ['empty', ''],
    ['no .nar', FILE_HASH],
    ['an unknown extension', `${FILE_HASH}.nar.zip`],
    ['a Nix-style .zstd', `${FILE_HASH}.nar.zstd`],
    ['two extensions', `${FILE_HASH}.nar.xz.xz`],
    ['a trailing dot', `${FILE_HASH}.nar.`],
    ['upper case', `${FILE_HASH.toUpperCase()}.nar.xz`],
    ['a 51-character hash', `${FILE_HASH.slice(1)}.nar.xz`],
    ['a 53-character hash', `${FILE_HASH}0.nar.xz`],
    ['a store-path-sized hash', 'yn39z09qmap99ya52fnkas1amd832dbm.nar.xz'],
    ['bits beyond 32 bytes', `2${'z'.repeat(51)}.nar.xz`],
    ['a letter outside the alphabet', `e${FILE_HASH.slice(1)}.nar`],
    ['a slash', `nar/${FILE_HASH}.nar.xz`],
    ['dot-dot', '..'],
    ['a traversal', `../${FILE_HASH}.nar`],
    ['a legacy nix-serve name', `${FILE_HASH}-${FILE_HASH}.nar`],
    ['a query string', `${FILE_HASH}.nar.xz?hash=1`],
    ['a newline', `${FILE_HASH}.nar.xz\n`],
    ['a NUL', `${FILE_HASH}.nar\u0000.xz`],
  ])('rejects %s', (_what, name) => {
    expect(() => parseNarFileName(name)).toThrow(InvalidNarNameError);
  });
});
