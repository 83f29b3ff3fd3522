import { hash, randomBytes } from 'node:crypto';
import { isPermission, PERMISSIONS, type Permission } from '../common/access';

/**
 * Access tokens as they travel: `nw_` and 43 characters (32 random bytes, base64url). Only their
 * sha256 is stored: with 256 random bits a fast hash is enough (a slow one is for guessable
 * passwords), and it keeps the per-request check cheap.
 */

const PREFIX = 'nw_';
const TOKEN = /^nw_[A-Za-z0-9_-]{43}$/;
/** Token names: what logs and `narwhal token list` show. */
const NAME = /^[A-Za-z0-9._-]{1,64}$/;

export function generateToken(): string {
  return PREFIX + randomBytes(32).toString('base64url');
}

/** True for something that has the shape of a token (the only ones worth a lookup). */
export function looksLikeToken(s: string): boolean {
  return TOKEN.test(s);
}

/** sha256 of the token, hex (what the database keeps). One-shot `hash`: ~0.6 µs, a third of createHash's. */
export function hashToken(token: string): string {
  return hash('sha256', token, 'hex');
}

/** What an `Authorization` header carries. */
export type Credentials =
  { kind: 'none' } | { kind: 'malformed' } | { kind: 'token'; token: string };

/**
 * The token an `Authorization` header carries: the password of HTTP Basic auth, whatever the user
 * name (what Nix sends from its netrc file, and a browser after a 401), or a Bearer token.
 */
export function credentialsOf(header: string | undefined): Credentials {
  if (header === undefined || header === '') return { kind: 'none' };
  const space = header.indexOf(' ');
  const scheme = header.slice(0, Math.max(0, space)).toLowerCase();
  const value = header.slice(space + 1).trim();
  let token = '';
  if (scheme === 'bearer') token = value;
  else if (scheme === 'basic') {
    const decoded = Buffer.from(value, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon >= 0) token = decoded.slice(colon + 1);
  }
  return token ? { kind: 'token', token } : { kind: 'malformed' };
}

/** `read,write` → the permissions; throws naming a bad one. */
export function parsePermissions(text: string): Permission[] {
  const given = text
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean);
  if (given.length === 0) throw new Error(`no permission given (of ${PERMISSIONS.join(', ')})`);
  for (const p of given) {
    if (!isPermission(p)) {
      throw new Error(`unknown permission "${p}" (known: ${PERMISSIONS.join(', ')})`);
    }
  }
  // In the canonical order, once each.
  return PERMISSIONS.filter((p) => given.includes(p));
}

export function checkTokenName(name: string): string {
  if (!NAME.test(name)) {
    throw new Error(`token name "${name}" must be 1–64 letters, digits, ".", "_" or "-"`);
  }
  return name;
}
