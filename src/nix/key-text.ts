/**
 * The text forms of Nix signing keys and signatures, parsed without any cryptography (config reads
 * trusted keys with these; signing/ signs and verifies): public key `<name>:<base64 of 32 bytes>`,
 * signature `<name>:<base64 of 64 bytes>`. Errors never include the text.
 */
import { InvalidKeyError, InvalidSignatureError } from './errors';

export interface PublicKey {
  name: string;
  /** 32 bytes. */
  key: Uint8Array;
}

const PUBLIC_KEY_BYTES = 32;
const SIGNATURE_BYTES = 64;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** A key name as Nix accepts it: non-empty, no ':'; narwhal also refuses whitespace. */
export function isKeyName(name: string): boolean {
  return name.length > 0 && !/[:\s]/.test(name);
}

/** Splits `<name>:<base64>` and decodes the payload; undefined if the form is wrong. */
export function splitNamed(
  text: string,
  bytes: number,
): { name: string; payload: Uint8Array } | undefined {
  const colon = text.indexOf(':');
  if (colon <= 0) return undefined;
  const name = text.slice(0, colon);
  const b64 = text.slice(colon + 1);
  if (!isKeyName(name) || b64.length % 4 !== 0 || !BASE64.test(b64)) return undefined;
  const payload = Buffer.from(b64, 'base64');
  if (payload.length !== bytes || payload.toString('base64') !== b64) return undefined;
  return { name, payload: new Uint8Array(payload) };
}

export function parsePublicKey(text: string): PublicKey {
  const parts = splitNamed(text.trim(), PUBLIC_KEY_BYTES);
  if (parts === undefined) {
    throw new InvalidKeyError('public key is not "<name>:<base64 of 32 bytes>"');
  }
  return { name: parts.name, key: parts.payload };
}

export function parseSignature(s: string): { keyName: string; signature: Uint8Array } {
  const parts = splitNamed(s.trim(), SIGNATURE_BYTES);
  if (parts === undefined) {
    throw new InvalidSignatureError('signature is not "<key name>:<base64 of 64 bytes>"');
  }
  return { keyName: parts.name, signature: parts.payload };
}
