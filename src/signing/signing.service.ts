import { Inject, Injectable } from '@nestjs/common';
import { createHmac } from 'node:crypto';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { formatPublicKey, signFingerprint, verifyFingerprint, type SecretKey } from './keys';

export const SIGNING_KEY = Symbol('SIGNING_KEY');

/** narwhal's own signing key, and the upstream keys it trusts. */
@Injectable()
export class SigningService {
  readonly publicKey: string;

  constructor(
    @Inject(SIGNING_KEY) private readonly key: SecretKey,
    @Inject(APP_CONFIG) private readonly config: AppConfig,
  ) {
    this.publicKey = formatPublicKey(key);
  }

  get keyName(): string {
    return this.key.name;
  }

  get enabled(): boolean {
    return this.config.signing.signNarInfo;
  }

  /**
   * A secret derived from the signing key for `purpose` (HMAC-SHA256, hex): every instance of a
   * deployment shares the key, so they share this secret too, without another setting to keep.
   */
  derivedSecret(purpose: string): string {
    return createHmac('sha256', this.key.secretKey).update(`narwhal:${purpose}`).digest('hex');
  }

  sign(fingerprint: string): string {
    return signFingerprint(this.key, fingerprint);
  }

  /** True if one of `sigs` verifies `fingerprint` against a configured upstream key. */
  verifiedByUpstream(fingerprint: string, sigs: readonly string[]): boolean {
    return sigs.some((s) => verifyFingerprint(s, fingerprint, this.config.upstreamPublicKeys));
  }
}
