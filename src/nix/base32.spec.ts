import { describe, expect, it } from 'vitest';
import { HASH_VECTORS, NIX_REJECTED_NIX32, STORE_PATH_HASH_VECTORS } from './__fixtures__/vectors';
import { NIX32_ALPHABET, decodeNix32, encodeNix32, isNix32, nix32Length } from './base32';
import { InvalidHashError } from './errors';

describe('nix32', () => {
  it('uses the 32-character alphabet without e, o, t, u', () => {
    expect(NIX32_ALPHABET).toBe('0123456789abcdfghijklmnpqrsvwxyz');
    expect(new Set(NIX32_ALPHABET).size).toBe(32);
  });

  describe.each(HASH_VECTORS)('$algo of $input (vector from nix-hash)', (v) => {
    it('encodes like Nix', () => {
      expect(encodeNix32(Buffer.from(v.hex, 'hex'))).toBe(v.nix32);
    });
    it('decodes like Nix', () => {
      expect(decodeNix32(v.nix32).toString('hex')).toBe(v.hex);
    });
  });

  describe.each(STORE_PATH_HASH_VECTORS)('store path hash part $nix32', (v) => {
    it('round-trips the 20 bytes Nix reports', () => {
      expect(decodeNix32(v.nix32).toString('hex')).toBe(v.hex);
      expect(encodeNix32(Buffer.from(v.hex, 'hex'))).toBe(v.nix32);
    });
  });

  it('has the lengths Nix uses for each digest size', () => {
    expect(nix32Length(16)).toBe(26);
    expect(nix32Length(20)).toBe(32);
    expect(nix32Length(32)).toBe(52);
    expect(nix32Length(64)).toBe(103);
  });

  it('reads the digest from the end: the first character holds the last byte’s top bits', () => {
    const bytes = Buffer.alloc(32);
    bytes[31] = 0x80;
    expect(encodeNix32(bytes)).toBe(`1${'0'.repeat(51)}`);
    bytes[31] = 0;
    bytes[0] = 0x1f;
    expect(encodeNix32(bytes)).toBe(`${'0'.repeat(51)}z`);
  });

  it('round-trips random digests of every size', () => {
    for (const size of [0, 1, 2, 5, 16, 20, 32, 33, 64]) {
      for (let n = 0; n < 20; n++) {
        const bytes = Buffer.from(
          Array.from({ length: size }, () => Math.floor(Math.random() * 256)),
        );
        const text = encodeNix32(bytes);
        expect(text).toHaveLength(nix32Length(size));
        expect(decodeNix32(text).equals(bytes)).toBe(true);
      }
    }
  });

  it.each(NIX_REJECTED_NIX32)('rejects $text as Nix does', ({ text }) => {
    expect(() => decodeNix32(text)).toThrow(InvalidHashError);
  });

  it('accepts the largest value that fits, as Nix does', () => {
    expect(decodeNix32(`7${'z'.repeat(25)}`).toString('hex')).toBe('ff'.repeat(16));
    expect(decodeNix32('z'.repeat(32)).toString('hex')).toBe('ff'.repeat(20));
  });

  it('rejects lengths no byte count produces', () => {
    for (const len of [1, 3, 6, 51, 54]) {
      expect(() => decodeNix32('0'.repeat(len))).toThrow(/length/);
    }
  });

  it('rejects characters outside the alphabet, including upper case', () => {
    for (const bad of ['e', 'o', 't', 'u', 'A', '-', ' ', '/', 'é']) {
      expect(() => decodeNix32(`${bad}${'0'.repeat(51)}`)).toThrow(InvalidHashError);
    }
  });

  it('isNix32 checks characters, bits and the optional length', () => {
    expect(isNix32('0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73')).toBe(true);
    expect(isNix32('0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73', 52)).toBe(true);
    expect(isNix32('0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73', 32)).toBe(false);
    expect(isNix32('yn39z09qmap99ya52fnkas1amd832dbm', 32)).toBe(true);
    expect(isNix32(`2${'z'.repeat(51)}`)).toBe(false);
    expect(isNix32('YN39Z09QMAP99YA52FNKAS1AMD832DBM', 32)).toBe(false);
    expect(isNix32('')).toBe(false);
  });
});
