import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { NarFormatError } from './errors';
import { isNarListing, listNar, serializeNarListing } from './nar-listing';

/** NAR token: u64 LE length, bytes, zero padding to 8. */
function str(s: string | Buffer): Buffer {
  const b = typeof s === 'string' ? Buffer.from(s) : s;
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(b.length));
  return Buffer.concat([len, b, Buffer.alloc((8 - (b.length % 8)) % 8)]);
}
const nar = (...tokens: (string | Buffer)[]) => Buffer.concat(tokens.map(str));

/** A directory with an executable, a symlink and a subdirectory holding a regular file. */
const TREE = nar(
  'nix-archive-1',
  '(',
  'type',
  'directory',
  'entry',
  '(',
  'name',
  'bin',
  'node',
  '(',
  'type',
  'directory',
  'entry',
  '(',
  'name',
  'hello',
  'node',
  '(',
  'type',
  'regular',
  'executable',
  '',
  'contents',
  Buffer.from('#!/bin/sh\n'),
  ')',
  ')',
  ')',
  ')',
  'entry',
  '(',
  'name',
  'link',
  'node',
  '(',
  'type',
  'symlink',
  'target',
  'bin/hello',
  ')',
  ')',
  'entry',
  '(',
  'name',
  'share',
  'node',
  '(',
  'type',
  'regular',
  'contents',
  'x'.repeat(20),
  ')',
  ')',
  ')',
);

function chunks(b: Buffer, size: number): AsyncIterable<Buffer> {
  const parts: Buffer[] = [];
  for (let i = 0; i < b.length; i += size) parts.push(b.subarray(i, i + size));
  return Readable.from(parts);
}

describe('listNar', () => {
  it('lists a tree with narOffsets where the contents start, whatever the chunking', async () => {
    const helloAt = TREE.indexOf('#!/bin/sh\n');
    const shareAt = TREE.indexOf('x'.repeat(20));
    const want = {
      version: 1,
      root: {
        type: 'directory',
        entries: {
          bin: {
            type: 'directory',
            entries: { hello: { type: 'regular', size: 10, executable: true, narOffset: helloAt } },
          },
          link: { type: 'symlink', target: 'bin/hello' },
          share: { type: 'regular', size: 20, narOffset: shareAt },
        },
      },
    };
    for (const size of [1, 7, 64, TREE.length]) {
      expect(await listNar(chunks(TREE, size))).toEqual(want);
    }
    // Keys in Nix's order: type, size, executable, narOffset.
    expect(serializeNarListing(await listNar(chunks(TREE, 64)))).toContain(
      `"hello":{"type":"regular","size":10,"executable":true,"narOffset":${helloAt}}`,
    );
  });

  it('lists the NAR Nix made for a single file (leaf.nar)', async () => {
    const leaf = readFileSync(join(__dirname, '__fixtures__', 'nar', 'leaf.nar'));
    const listing = await listNar(chunks(leaf, 100));
    expect(listing).toEqual({
      version: 1,
      root: { type: 'regular', size: 'hello-narwhal\n'.length, narOffset: 96 },
    });
    expect(isNarListing(listing)).toBe(true);
  });

  it('rejects what is not a NAR', async () => {
    const bad = [
      nar('nix-archive-2', '(', 'type', 'regular', 'contents', 'x', ')'),
      TREE.subarray(0, TREE.length - 8), // truncated
      Buffer.concat([TREE, str('more')]), // trailing bytes
      nar('nix-archive-1', '(', 'type', 'fifo', ')'),
      nar(
        'nix-archive-1',
        '(',
        'type',
        'directory',
        'entry',
        '(',
        'name',
        'b',
        'node',
        '(',
        'type',
        'symlink',
        'target',
        'x',
        ')',
        ')',
        'entry',
        '(',
        'name',
        'a',
        'node',
        '(',
        'type',
        'symlink',
        'target',
        'x',
        ')',
        ')',
        ')',
      ), // not sorted
      nar(
        'nix-archive-1',
        '(',
        'type',
        'directory',
        'entry',
        '(',
        'name',
        '..',
        'node',
        '(',
        'type',
        'symlink',
        'target',
        'x',
        ')',
        ')',
        ')',
      ),
    ];
    for (const b of bad)
      await expect(listNar(chunks(b, 16))).rejects.toBeInstanceOf(NarFormatError);
  });

  it('tells listings from other JSON', () => {
    expect(isNarListing({ version: 1, root: { type: 'symlink', target: 'x' } })).toBe(true);
    expect(isNarListing({ version: 2, root: { type: 'symlink' } })).toBe(false);
    expect(isNarListing({ version: 1 })).toBe(false);
    expect(isNarListing('x')).toBe(false);
  });
});
