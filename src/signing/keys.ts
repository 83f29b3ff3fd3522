/**
 * Nix signing keys and narinfo signatures (ed25519, libsodium layout). Keys are made and checked with
 * tweetnacl; signing and verifying on the request path use Node's native ed25519 (same bytes —
 * ed25519 is deterministic, and a spec checks the two agree), which is ~50× faster than tweetnacl's
 * pure-JS arithmetic (measured: sign 7.7 ms → 0.07 ms, verify 14 ms → 0.2 ms) and so keeps a cold
 * narinfo from blocking the event loop.
 *
 * Secret key text: `<name>:<base64 of 64 bytes>` (32-byte seed followed by the 32-byte public key).
 * Public key text: `<name>:<base64 of 32 bytes>`. Signature: `<name>:<base64 of 64 bytes>`.
 * Errors about keys never include the key text.
 */
import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import nacl from 'tweetnacl';
import { InvalidKeyError } from '../nix/errors';
import { isKeyName, parseSignature, splitNamed, type PublicKey } from '../nix/key-text';

export { parsePublicKey, parseSignature, type PublicKey } from '../nix/key-text';

export interface SecretKey {
  name: string;
  /** 64 bytes: seed ‖ public key. */
  secretKey: Uint8Array;
  /** 32 bytes. */
  publicKey: Uint8Array;
}

const SECRET_KEY_BYTES = nacl.sign.secretKeyLength; // 64
const PUBLIC_KEY_BYTES = nacl.sign.publicKeyLength; // 32
function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

export function parseSecretKey(text: string): SecretKey {
  const parts = splitNamed(text.trim(), SECRET_KEY_BYTES);
  if (parts === undefined) {
    throw new InvalidKeyError(
      'secret key is not "<name>:<base64 of 64 bytes>" (as written by nix-store --generate-binary-cache-key)',
    );
  }
  const seed = parts.payload.subarray(0, 32);
  const derived = nacl.sign.keyPair.fromSeed(seed);
  if (!equalBytes(derived.secretKey, parts.payload)) {
    throw new InvalidKeyError('secret key is corrupt: its public half does not match its seed');
  }
  return { name: parts.name, secretKey: derived.secretKey, publicKey: derived.publicKey };
}

export function generateSecretKey(name: string): SecretKey {
  if (!isKeyName(name)) {
    throw new InvalidKeyError(
      `key name ${JSON.stringify(name)} must be non-empty, without ':' or whitespace`,
    );
  }
  const pair = nacl.sign.keyPair();
  return { name, secretKey: pair.secretKey, publicKey: pair.publicKey };
}

export function formatSecretKey(k: SecretKey): string {
  return `${k.name}:${Buffer.from(k.secretKey).toString('base64')}`;
}

export function formatPublicKey(k: SecretKey | PublicKey): string {
  const key = 'key' in k ? k.key : k.publicKey;
  return `${k.name}:${Buffer.from(key).toString('base64')}`;
}

/** Signs a narinfo fingerprint; returns the `Sig:` value `<name>:<base64>`. */
export function signFingerprint(k: SecretKey, fingerprint: string): string {
  const sig = sign(null, Buffer.from(fingerprint, 'utf8'), nativePrivateKey(k.secretKey));
  return `${k.name}:${sig.toString('base64')}`;
}

// DER prefixes that wrap a raw ed25519 seed (PKCS#8) or public key (SPKI) for node:crypto.
const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_ED25519 = Buffer.from('302a300506032b6570032100', 'hex');
const nativeKeys = new WeakMap<Uint8Array, KeyObject>();

function nativePrivateKey(secretKey: Uint8Array): KeyObject {
  let k = nativeKeys.get(secretKey);
  if (!k) {
    const seed = Buffer.from(secretKey.subarray(0, 32));
    k = createPrivateKey({
      key: Buffer.concat([PKCS8_ED25519, seed]),
      format: 'der',
      type: 'pkcs8',
    });
    nativeKeys.set(secretKey, k);
  }
  return k;
}

function nativePublicKey(publicKey: Uint8Array): KeyObject {
  let k = nativeKeys.get(publicKey);
  if (!k) {
    k = createPublicKey({
      key: Buffer.concat([SPKI_ED25519, publicKey]),
      format: 'der',
      type: 'spki',
    });
    nativeKeys.set(publicKey, k);
  }
  return k;
}

/**
 * True if `sig` names one of the `trusted` keys and verifies `fingerprint` with it. Malformed
 * signatures and unknown key names give false; this never throws.
 */
export function verifyFingerprint(sig: string, fingerprint: string, trusted: PublicKey[]): boolean {
  let parsed: { keyName: string; signature: Uint8Array };
  try {
    parsed = parseSignature(sig);
  } catch {
    return false;
  }
  const message = Buffer.from(fingerprint, 'utf8');
  return trusted.some(
    (key) =>
      key.name === parsed.keyName &&
      key.key.length === PUBLIC_KEY_BYTES &&
      verifyNative(message, key.key, parsed.signature),
  );
}

function verifyNative(message: Buffer, publicKey: Uint8Array, signature: Uint8Array): boolean {
  try {
    return verify(null, message, nativePublicKey(publicKey), signature);
  } catch {
    return false; // a public key that is not a curve point
  }
}
