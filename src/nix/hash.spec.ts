import { describe, expect, it } from 'vitest';
import { HASH_VECTORS, SRI_VECTOR } from './__fixtures__/vectors';
import { InvalidHashError } from './errors';
import { formatNixHash, formatSriHash, normalizeSha256, parseNixHash, sha256Nix32 } from './hash';

describe('parseNixHash', () => {
  describe.each(HASH_VECTORS)('$algo of $input (vector from nix hash)', (v) => {
    const forms = {
      nix32: `${v.algo}:${v.nix32}`,
      hex: `${v.algo}:${v.hex}`,
      'upper-case hex': `${v.algo}:${v.hex.toUpperCase()}`,
      base64: `${v.algo}:${v.base64}`,
      SRI: `${v.algo}-${v.base64}`,
      'SRI without padding': `${v.algo}-${v.base64.replace(/=+$/, '')}`,
    };
    it.each(Object.entries(forms))('accepts the %s form', (_form, text) => {
      const h = parseNixHash(text);
      expect(h.algo).toBe(v.algo);
      expect(h.digest.toString('hex')).toBe(v.hex);
    });
    it('formats as <algo>:<nix32> and as SRI', () => {
      const h = parseNixHash(`${v.algo}:${v.hex}`);
      expect(formatNixHash(h)).toBe(`${v.algo}:${v.nix32}`);
      expect(formatSriHash(h)).toBe(`${v.algo}-${v.base64}`);
    });
  });

  it('reads the SRI narHash of `nix path-info --json` as the narinfo NarHash', () => {
    expect(formatNixHash(parseNixHash(SRI_VECTOR.sri))).toBe(SRI_VECTOR.nix32);
  });

  const sha256Hex = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
  it.each([
    ['no algorithm', sha256Hex],
    ['an unknown algorithm', `sha384:${sha256Hex}`],
    ['an upper-case algorithm', `SHA256:${sha256Hex}`],
    ['a digest too short', `sha256:${sha256Hex.slice(2)}`],
    ['a digest too long', `sha256:${sha256Hex}00`],
    ['a sha1-sized digest for sha256', 'sha256:da39a3ee5e6b4b0d3255bfef95601890afd80709'],
    ['a non-hex character', `sha256:${sha256Hex.slice(1)}g`],
    ['bits beyond the digest in nix32', `sha256:2${'z'.repeat(51)}`],
    [
      'base64 without padding in the colon form',
      'sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU',
    ],
    ['base64url characters', 'sha256-47DEQpj8HBSa-_TImW+5JCeuQeRkm5NMpJWZG3hSuFU='],
    ['SRI of the wrong size', 'sha256-1B2M2Y8AsgTpgAmY7PhCfg=='],
    ['SRI with non-canonical trailing bits', 'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFV='],
    ['surrounding whitespace', ` sha256:${sha256Hex}`],
    ['an empty digest', 'sha256:'],
    ['an empty string', ''],
  ])('rejects %s', (_what, text) => {
    expect(() => parseNixHash(text)).toThrow(InvalidHashError);
  });

  it('quotes the bad value in its message', () => {
    expect(() => parseNixHash('sha256:nope')).toThrow(/"sha256:nope"/);
  });
});

describe('normalizeSha256', () => {
  it('turns any sha256 form into sha256:<nix32>', () => {
    const want = 'sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73';
    expect(normalizeSha256('sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=')).toBe(want);
    expect(normalizeSha256(want)).toBe(want);
  });

  it('refuses other algorithms', () => {
    expect(() => normalizeSha256('sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709')).toThrow(
      /sha256/,
    );
  });
});

describe('sha256Nix32', () => {
  it('encodes a 32-byte digest in 52 characters', () => {
    const digest = Buffer.from(
      'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
      'hex',
    );
    expect(sha256Nix32(digest)).toBe('1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s');
  });

  it('refuses digests of another size', () => {
    expect(() => sha256Nix32(Buffer.alloc(20))).toThrow(InvalidHashError);
  });
});
