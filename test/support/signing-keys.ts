import { formatPublicKey, generateSecretKey, type SecretKey } from '../../src/signing/keys';

/** A signing key made in-process, as an upstream cache would hold it. */
export interface TestKey {
  secret: SecretKey;
  /** `name:base64`, as given to --cache-upstream-public-key. */
  publicText: string;
}

export function makeKey(name: string): TestKey {
  const secret = generateSecretKey(name);
  return { secret, publicText: formatPublicKey(secret) };
}
