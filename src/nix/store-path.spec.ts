import { describe, expect, it } from 'vitest';
import { InvalidStorePathError } from './errors';
import {
  STORE_PATH_HASH_LENGTH,
  isStorePathBaseName,
  isStorePathHash,
  isValidStorePathName,
  parseStorePath,
  parseStorePathBaseName,
  storePathOf,
} from './store-path';

const HASH = 'yn39z09qmap99ya52fnkas1amd832dbm';

describe('isStorePathHash', () => {
  it('accepts 32 nix32 characters', () => {
    expect(STORE_PATH_HASH_LENGTH).toBe(32);
    expect(isStorePathHash(HASH)).toBe(true);
  });

  it.each([
    ['too short', HASH.slice(1)],
    ['too long', `${HASH}0`],
    ['upper case', HASH.toUpperCase()],
    ['a letter outside the alphabet', `e${HASH.slice(1)}`],
    ['a 52-character file hash', '1dj881h51cx0jzblhskrwhgymdgsvm3jqn5rk7zjzw4z8vhzyn0b'],
    ['empty', ''],
  ])('rejects %s', (_what, s) => {
    expect(isStorePathHash(s)).toBe(false);
  });
});

describe('parseStorePathBaseName', () => {
  it.each([
    ['leaf', 'leaf'],
    ['a name with every allowed punctuation', 'a+b-c.d_e?f=g'],
    ['a .drv', 'mid.drv'],
    ['a name of 211 characters', 'a'.repeat(211)],
    ['a leading dot (Nix 2.8 and current Nix accept it)', '.hidden'],
    ['a leading "..x"', '..x'],
    ['a name with dashes', 'hello-2.12.1-man'],
  ])('accepts %s', (_what, name) => {
    expect(parseStorePathBaseName(`${HASH}-${name}`)).toEqual({ hash: HASH, name });
    expect(isStorePathBaseName(`${HASH}-${name}`)).toBe(true);
    expect(isValidStorePathName(name)).toBe(true);
  });

  it.each([
    ['an empty name', `${HASH}-`],
    ['no name at all', HASH],
    ['a name of 212 characters', `${HASH}-${'a'.repeat(212)}`],
    ['"."', `${HASH}-.`],
    ['".."', `${HASH}-..`],
    ['a name starting with ".-"', `${HASH}-.-x`],
    ['a name starting with "..-"', `${HASH}-..-x`],
    ['a slash', `${HASH}-a/b`],
    ['a space', `${HASH}-a b`],
    ['an "@"', `${HASH}-a@b`],
    ['a non-ASCII letter', `${HASH}-caf\u00e9`],
    ['a NUL', `${HASH}-a\u0000`],
    ['a newline', `${HASH}-a\n`],
    ['an underscore instead of the dash', `${HASH}_leaf`],
    ['a short hash', `${HASH.slice(1)}-leaf`],
    ['an invalid hash character', `${HASH.slice(0, 31)}e-leaf`],
    ['an upper-case hash', `${HASH.toUpperCase()}-leaf`],
    ['an empty string', ''],
  ])('rejects %s', (_what, base) => {
    expect(() => parseStorePathBaseName(base)).toThrow(InvalidStorePathError);
    expect(isStorePathBaseName(base)).toBe(false);
  });

  it('says what is wrong', () => {
    expect(() => parseStorePathBaseName(`${HASH}-.`)).toThrow(/"\."/);
    expect(() => parseStorePathBaseName(`${HASH}-${'a'.repeat(212)}`)).toThrow(/211/);
  });
});

describe('parseStorePath', () => {
  it('splits a store path', () => {
    expect(parseStorePath(`/nix/store/${HASH}-leaf`, '/nix/store')).toEqual({
      hash: HASH,
      name: 'leaf',
      baseName: `${HASH}-leaf`,
    });
  });

  it('honours another store directory, with or without a trailing slash', () => {
    expect(parseStorePath(`/gnu/store/${HASH}-leaf`, '/gnu/store').name).toBe('leaf');
    expect(parseStorePath(`/gnu/store/${HASH}-leaf`, '/gnu/store/').name).toBe('leaf');
  });

  it.each([
    ['another store', `/gnu/store/${HASH}-leaf`],
    ['a prefix that is not a directory', `/nix/storex/${HASH}-leaf`],
    ['a file inside a store path', `/nix/store/${HASH}-leaf/bin/sh`],
    ['a trailing slash', `/nix/store/${HASH}-leaf/`],
    ['a doubled slash', `/nix/store//${HASH}-leaf`],
    ['a relative path', `nix/store/${HASH}-leaf`],
    ['a bare base name', `${HASH}-leaf`],
    ['the store directory itself', '/nix/store'],
    ['dot segments', `/nix/store/../store/${HASH}-leaf`],
  ])('rejects %s', (_what, path) => {
    expect(() => parseStorePath(path, '/nix/store')).toThrow(InvalidStorePathError);
  });
});

describe('storePathOf', () => {
  it('joins a validated base name to the store directory', () => {
    expect(storePathOf(`${HASH}-leaf`, '/nix/store')).toBe(`/nix/store/${HASH}-leaf`);
    expect(() => storePathOf('../etc/passwd', '/nix/store')).toThrow(InvalidStorePathError);
  });
});
