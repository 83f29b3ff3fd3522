import { describe, expect, it } from 'vitest';
import { STORE_DIR, fixtureText } from './__fixtures__/vectors';
import { InvalidHashError, InvalidStorePathError, NarInfoParseError } from './errors';
import { narInfoFingerprint } from './fingerprint';
import { parseNarInfo } from './narinfo';

const top = parseNarInfo(fixtureText('narinfo/top.xz.narinfo'), { storeDir: STORE_DIR });

describe('narInfoFingerprint', () => {
  it('is 1;path;narhash;narsize;full reference paths', () => {
    expect(narInfoFingerprint(top, STORE_DIR)).toBe(
      '1;/nix/store/r8pw0ryn1hkp3ip4wmr13ggk165f3235-top;' +
        'sha256:0ks3ccvi5vhw46gmgakzqd6rncymkxd38yfgsl406cfsrfaadyyl;616;' +
        '/nix/store/fybihwaqfjjwcgys0kw2qxll86cn93xn-mid,' +
        '/nix/store/r8pw0ryn1hkp3ip4wmr13ggk165f3235-top,' +
        '/nix/store/yn39z09qmap99ya52fnkas1amd832dbm-leaf',
    );
  });

  it('sorts references, whatever order they come in', () => {
    const shuffled = { ...top, references: [...top.references].reverse() };
    expect(narInfoFingerprint(shuffled, STORE_DIR)).toBe(narInfoFingerprint(top, STORE_DIR));
  });

  it('ends with an empty field when there are no references', () => {
    const leaf = parseNarInfo(fixtureText('narinfo/leaf.xz.narinfo'), { storeDir: STORE_DIR });
    expect(narInfoFingerprint(leaf, STORE_DIR)).toBe(
      '1;/nix/store/yn39z09qmap99ya52fnkas1amd832dbm-leaf;' +
        'sha256:1h0h041d78cv275g84ska22hhyap440c5xbs9w3a0zaxvbgf0xsa;128;',
    );
  });

  it('writes NarHash as sha256:<nix32> even when given SRI', () => {
    const sri = { ...top, narHash: 'sha256-bqoTXdkwpuCtC8uMK5ICf1uV5/qFUBgdh5jLc3WSZQs=' };
    expect(narInfoFingerprint(sri, STORE_DIR)).toContain(
      ';sha256:02v5j9sp7jwqhwfihl45zbkranvz0a92p36b1fny19ihv5fi7akf;',
    );
  });

  it('refuses what it cannot fingerprint', () => {
    expect(() => narInfoFingerprint({ ...top, narSize: 0 }, STORE_DIR)).toThrow(NarInfoParseError);
    expect(() =>
      narInfoFingerprint({ ...top, narHash: 'md5:d41d8cd98f00b204e9800998ecf8427e' }, STORE_DIR),
    ).toThrow(InvalidHashError);
    expect(() => narInfoFingerprint({ ...top, references: ['x;y'] }, STORE_DIR)).toThrow(
      InvalidStorePathError,
    );
    expect(() => narInfoFingerprint(top, '/gnu/store')).toThrow(InvalidStorePathError);
  });
});
