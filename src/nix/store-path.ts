/**
 * Store paths: `<storeDir>/<32 nix32 chars>-<name>`.
 *
 * Name rules follow current Nix (`checkName`): 1 to 211 characters from [A-Za-z0-9+-._?=], not
 * `.` or `..`, and not starting with `.-` or `..-`. Other leading dots are allowed: Nix 2.4 to 2.8
 * (checked with 2.8) accept them, some later releases refused them, and Nix re-allowed them for good
 * (NixOS/nix#912), so such paths exist in caches.
 */
import { isNix32 } from './base32';
import { InvalidStorePathError, quoteForError } from './errors';

export const STORE_PATH_HASH_LENGTH = 32;
export const STORE_PATH_NAME_MAX_LENGTH = 211;

const NAME_CHARS = /^[A-Za-z0-9+\-._?=]+$/;

export interface StorePathBaseName {
  hash: string;
  name: string;
}

export interface ParsedStorePath extends StorePathBaseName {
  baseName: string;
}

/** True for the 32-character nix32 hash part of a store path (what `<hash>.narinfo` carries). */
export function isStorePathHash(s: string): boolean {
  return isNix32(s, STORE_PATH_HASH_LENGTH);
}

/** Returns why `name` is not a valid store path name, or undefined if it is. */
function nameProblem(name: string): string | undefined {
  if (name.length === 0) return 'its name is empty';
  if (name.length > STORE_PATH_NAME_MAX_LENGTH) {
    return `its name is longer than ${STORE_PATH_NAME_MAX_LENGTH} characters`;
  }
  if (name === '.' || name === '..') return `its name is ${quoteForError(name)}`;
  if (name.startsWith('.-') || name.startsWith('..-')) {
    return "its name's first dash-separated part is '.' or '..'";
  }
  if (!NAME_CHARS.test(name)) return 'its name has a character outside [A-Za-z0-9+-._?=]';
  return undefined;
}

export function isValidStorePathName(name: string): boolean {
  return nameProblem(name) === undefined;
}

/** Splits and validates `<hash>-<name>` (the last component of a store path). */
export function parseStorePathBaseName(base: string): StorePathBaseName {
  const hash = base.slice(0, STORE_PATH_HASH_LENGTH);
  if (!isStorePathHash(hash) || base[STORE_PATH_HASH_LENGTH] !== '-') {
    throw new InvalidStorePathError(
      `store path base name ${quoteForError(base)} does not start with a 32-character nix32 hash and '-'`,
    );
  }
  const name = base.slice(STORE_PATH_HASH_LENGTH + 1);
  const problem = nameProblem(name);
  if (problem !== undefined) {
    throw new InvalidStorePathError(
      `store path base name ${quoteForError(base)} is invalid: ${problem}`,
    );
  }
  return { hash, name };
}

export function isStorePathBaseName(base: string): boolean {
  try {
    parseStorePathBaseName(base);
    return true;
  } catch {
    return false;
  }
}

/** Parses a full store path; it must be exactly `<storeDir>/<hash>-<name>`. */
export function parseStorePath(path: string, storeDir: string): ParsedStorePath {
  const dir = storeDir.endsWith('/') ? storeDir.slice(0, -1) : storeDir;
  const prefix = `${dir}/`;
  if (!path.startsWith(prefix)) {
    throw new InvalidStorePathError(
      `path ${quoteForError(path)} is not in the store ${quoteForError(dir)}`,
    );
  }
  const baseName = path.slice(prefix.length);
  if (baseName.includes('/')) {
    throw new InvalidStorePathError(`path ${quoteForError(path)} is not a top-level store path`);
  }
  return { ...parseStorePathBaseName(baseName), baseName };
}

/** `<storeDir>/<baseName>`, after validating the base name. */
export function storePathOf(baseName: string, storeDir: string): string {
  parseStorePathBaseName(baseName);
  const dir = storeDir.endsWith('/') ? storeDir.slice(0, -1) : storeDir;
  return `${dir}/${baseName}`;
}
