import { describe, expect, it } from 'vitest';
import {
  NIX_TEST_KEY,
  SIGNED_NARINFOS,
  STORE_DIR,
  fixtureText,
  rawSig,
} from '../nix/__fixtures__/vectors';
import { InvalidKeyError, InvalidSignatureError } from '../nix/errors';
import { narInfoFingerprint } from '../nix/fingerprint';
import { parseNarInfo } from '../nix/narinfo';
import nacl from 'tweetnacl';
import {
  type PublicKey,
  type SecretKey,
  formatPublicKey,
  formatSecretKey,
  generateSecretKey,
  parsePublicKey,
  parseSecretKey,
  parseSignature,
  signFingerprint,
  verifyFingerprint,
} from './keys';

const nixSecret = parseSecretKey(NIX_TEST_KEY.secret);
const nixPublic = parsePublicKey(NIX_TEST_KEY.public);

describe('keys made by nix-store --generate-binary-cache-key', () => {
  it('parse, and the secret key carries the public key Nix wrote', () => {
    expect(nixSecret.name).toBe('test-1');
    expect(nixSecret.secretKey).toHaveLength(64);
    expect(formatPublicKey(nixSecret)).toBe(NIX_TEST_KEY.public);
    expect(formatPublicKey(nixPublic)).toBe(NIX_TEST_KEY.public);
    expect(formatSecretKey(nixSecret)).toBe(NIX_TEST_KEY.secret);
  });

  it('tolerate surrounding whitespace (key files end with no newline, but editors add one)', () => {
    expect(formatSecretKey(parseSecretKey(`  ${NIX_TEST_KEY.secret}\n`))).toBe(NIX_TEST_KEY.secret);
    expect(parsePublicKey(`${NIX_TEST_KEY.public}\r\n`).name).toBe('test-1');
  });
});

describe.each(SIGNED_NARINFOS)('signatures Nix wrote in %s', (file) => {
  const text = fixtureText(file);
  const info = parseNarInfo(text, { storeDir: STORE_DIR });
  const fingerprint = narInfoFingerprint(info, STORE_DIR);
  const nixSig = rawSig(text);

  it('verify with our fingerprint and Nix’s public key', () => {
    expect(verifyFingerprint(nixSig, fingerprint, [nixPublic])).toBe(true);
  });

  it('are reproduced exactly by signFingerprint with Nix’s secret key', () => {
    expect(signFingerprint(nixSecret, fingerprint)).toBe(nixSig);
  });

  it('do not verify for another fingerprint', () => {
    const tampered = narInfoFingerprint({ ...info, narSize: info.narSize + 1 }, STORE_DIR);
    expect(verifyFingerprint(nixSig, tampered, [nixPublic])).toBe(false);
  });
});

describe('verifyFingerprint', () => {
  const fp =
    '1;/nix/store/yn39z09qmap99ya52fnkas1amd832dbm-leaf;sha256:1h0h041d78cv275g84ska22hhyap440c5xbs9w3a0zaxvbgf0xsa;128;';
  const sig = signFingerprint(nixSecret, fp);

  it('needs a trusted key of the same name', () => {
    const renamed: PublicKey = { name: 'test-2', key: nixPublic.key };
    expect(verifyFingerprint(sig, fp, [])).toBe(false);
    expect(verifyFingerprint(sig, fp, [renamed])).toBe(false);
    expect(verifyFingerprint(sig, fp, [renamed, nixPublic])).toBe(true);
  });

  it('rejects a key of the right name but other bytes', () => {
    const impostor = generateSecretKey('test-1');
    expect(verifyFingerprint(sig, fp, [parsePublicKey(formatPublicKey(impostor))])).toBe(false);
    expect(verifyFingerprint(sig, fp, [{ name: 'test-1', key: new Uint8Array(5) }])).toBe(false);
  });

  it.each([
    ['empty', ''],
    ['no name', sig.slice(sig.indexOf(':'))],
    ['no colon', sig.replace(':', '')],
    ['short signature', `test-1:${Buffer.alloc(63).toString('base64')}`],
    ['not base64', 'test-1:!!!!'],
    ['a flipped bit', sig.replace(/.(?=.{4}$)/, (c) => (c === 'A' ? 'B' : 'A'))],
  ])('returns false, without throwing, for a malformed signature: %s', (_what, bad) => {
    expect(verifyFingerprint(bad, fp, [nixPublic])).toBe(false);
  });
});

describe('parseSignature', () => {
  it('splits name and 64 signature bytes', () => {
    const parsed = parseSignature(`test-1:${Buffer.alloc(64, 1).toString('base64')}`);
    expect(parsed.keyName).toBe('test-1');
    expect(parsed.signature).toEqual(new Uint8Array(64).fill(1));
  });

  it.each([
    '',
    'test-1',
    ':AAAA',
    `test-1:${Buffer.alloc(32).toString('base64')}`,
    'test-1:not base64!',
  ])('throws for %j', (bad) => {
    expect(() => parseSignature(bad)).toThrow(InvalidSignatureError);
  });
});

describe('generated keys', () => {
  it('round-trip through their text forms and sign verifiably', () => {
    const key = generateSecretKey('narwhal-1');
    const again = parseSecretKey(formatSecretKey(key));
    expect(again).toEqual(key);
    const pub = parsePublicKey(formatPublicKey(key));
    expect(pub.name).toBe('narwhal-1');
    expect(verifyFingerprint(signFingerprint(again, 'x'), 'x', [pub])).toBe(true);
  });

  it.each(['', 'a:b', 'has space', 'tab\tname'])('refuse the name %j', (name) => {
    expect(() => generateSecretKey(name)).toThrow(InvalidKeyError);
  });
});

describe('bad key text', () => {
  const secretB64 = NIX_TEST_KEY.secret.slice('test-1:'.length);
  const seedOnly = Buffer.from(secretB64, 'base64').subarray(0, 32).toString('base64');
  const mismatched = Buffer.from(secretB64, 'base64');
  mismatched[40] ^= 1;
  const cases: [string, string][] = [
    ['empty', ''],
    ['no name', secretB64],
    ['an empty name', `:${secretB64}`],
    ['a 32-byte seed only', `test-1:${seedOnly}`],
    ['a public half that does not match the seed', `test-1:${mismatched.toString('base64')}`],
    ['a public key where a secret key belongs', NIX_TEST_KEY.public],
    ['broken base64', `test-1:${secretB64.slice(1)}`],
  ];

  it.each(cases)(
    'parseSecretKey throws InvalidKeyError for %s, without echoing the key',
    (_what, text) => {
      let caught: unknown;
      try {
        parseSecretKey(text);
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(InvalidKeyError);
      const message = (caught as Error).message;
      for (const secret of [
        secretB64,
        seedOnly,
        mismatched.toString('base64'),
        secretB64.slice(0, 12),
        secretB64.slice(1, 13),
      ]) {
        expect(message).not.toContain(secret);
      }
    },
  );

  it.each([
    ['empty', ''],
    ['a secret key where a public key belongs', NIX_TEST_KEY.secret],
    ['short', 'test-1:AAAA'],
    ['no name', NIX_TEST_KEY.public.slice('test-1'.length)],
  ])('parsePublicKey throws InvalidKeyError for %s', (_what, text) => {
    expect(() => parsePublicKey(text)).toThrow(InvalidKeyError);
  });
});

/** tweetnacl's signature: the reference the native path is checked against. */
function signFingerprintReference(k: SecretKey, fingerprint: string): string {
  const sig = nacl.sign.detached(Buffer.from(fingerprint, 'utf8'), k.secretKey);
  return `${k.name}:${Buffer.from(sig).toString('base64')}`;
}

describe('native ed25519 path agrees with tweetnacl', () => {
  it('signs byte-for-byte like tweetnacl and verifies what tweetnacl signed', () => {
    for (let i = 0; i < 20; i++) {
      const key = generateSecretKey(`k-${i}`);
      const fp = `1;/nix/store/${'a'.repeat(32)}-x${i};sha256:${'0'.repeat(52)};${i + 1};`;
      const native = signFingerprint(key, fp);
      expect(native).toBe(signFingerprintReference(key, fp));
      const trusted = [{ name: key.name, key: key.publicKey }];
      expect(verifyFingerprint(signFingerprintReference(key, fp), fp, trusted)).toBe(true);
      expect(verifyFingerprint(native, `${fp}x`, trusted)).toBe(false);
    }
  });
});
