import { Inject, Injectable, Logger } from '@nestjs/common';
import type { Permission } from '../common/access';
import { DatabaseUnavailableError } from '../common/errors';
import { SingleFlight } from '../common/single-flight';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { AccessTokenRepository } from '../database/access-token.repository';
import { DatabaseHealth } from '../database/database-health';
import { credentialsOf, hashToken, looksLikeToken } from './tokens';
import { isPermission } from '../common/access';

/** A token a request was allowed with: its name (for logs) and permissions. */
export interface GrantedToken {
  readonly name: string;
  readonly permissions: ReadonlySet<Permission>;
}

/** What a request's credentials turned out to be. */
export type TokenCheck =
  | { kind: 'none' }
  | { kind: 'invalid'; why: 'malformed' | 'unknown' | 'expired'; name?: string }
  | { kind: 'valid'; token: GrantedToken };

interface KnownToken extends GrantedToken {
  expiresAt: number | null;
  /** When its last use was written to the database by this instance. */
  touchedAt: number;
}

/** What this instance learned about one token hash, and when. */
interface Known {
  /** The sha256 (hex) the database holds. */
  hash: string;
  token: KnownToken | null;
  checkedAt: number;
}

/** Token hashes remembered (known and unknown ones alike); the oldest are dropped beyond. */
const KNOWN_MAX = 10_000;
/** A token's last use is written at most this often per instance. */
const TOUCH_EVERY_MS = 60_000;

/**
 * Checks the token a request carries against the tokens in the database. What it learns about a
 * token hash (valid with these permissions, or unknown) is kept in memory for
 * --cache-token-recheck-interval, so that a check costs a sha256 and a map lookup; that interval is
 * also how long a revoked token may still work on an instance. While the database is unreachable, a
 * token checked before keeps working (its expiry is still enforced).
 */
@Injectable()
export class TokenService {
  private readonly logger = new Logger('auth');
  private readonly known = new Map<string, Known>();
  private readonly loads = new SingleFlight<string, Known>();
  private readonly recheckMs: number;

  constructor(
    @Inject(APP_CONFIG) config: AppConfig,
    private readonly repo: AccessTokenRepository,
    private readonly db: DatabaseHealth,
  ) {
    this.recheckMs = config.access.tokenRecheckMs;
  }

  /**
   * Checks the token of an `Authorization` header (see credentialsOf). Answers at once (not a
   * promise) when memory knows the token: the check costs a sha256 and a map lookup then.
   */
  authenticate(authorization: string | undefined): TokenCheck | Promise<TokenCheck> {
    const credentials = credentialsOf(authorization);
    if (credentials.kind === 'none') return { kind: 'none' };
    if (credentials.kind === 'malformed' || !looksLikeToken(credentials.token)) {
      return { kind: 'invalid', why: 'malformed' };
    }
    const key = hashToken(credentials.token);
    const known = this.known.get(key);
    const now = Date.now();
    if (known && now - known.checkedAt < this.recheckMs) return this.verdict(known, key, now);
    return this.load(key, known).then((k) => this.verdict(k, key, Date.now()));
  }

  private verdict(known: Known, key: string, now: number): TokenCheck {
    // Found by its hash already; compared once more in constant time all the same.
    const t = known.token;
    if (!t || !sameHex(known.hash, key)) return { kind: 'invalid', why: 'unknown' };
    if (t.expiresAt !== null && t.expiresAt <= now) {
      return { kind: 'invalid', why: 'expired', name: t.name };
    }
    this.noteUse(t, now);
    return { kind: 'valid', token: t };
  }

  /** Forgets everything learned (tests; a revocation on this instance). */
  forgetAll(): void {
    this.known.clear();
  }

  private load(key: string, previous: Known | undefined): Promise<Known> {
    return this.loads.run(key, async () => {
      let row;
      try {
        row = await this.repo.findByHash(key);
      } catch (e) {
        if (!this.db.noteFailure(e)) throw e;
        if (previous) return previous; // what we knew, until the database answers again
        throw new DatabaseUnavailableError('the database is unavailable to check the token');
      }
      const permissions = new Set((row?.permissions ?? '').split(',').filter(isPermission));
      const known: Known = {
        hash: row?.tokenHash ?? key,
        token: row
          ? {
              name: row.name,
              permissions,
              expiresAt: row.expiresAt,
              touchedAt: previous?.token?.touchedAt ?? row.lastUsedAt ?? 0,
            }
          : null,
        checkedAt: Date.now(),
      };
      this.known.delete(key);
      this.known.set(key, known);
      if (this.known.size > KNOWN_MAX) this.known.delete(this.known.keys().next().value as string);
      return known;
    });
  }

  private noteUse(token: KnownToken, now: number): void {
    if (now - token.touchedAt < TOUCH_EVERY_MS) return;
    token.touchedAt = now;
    this.repo.touch(token.name, now).catch((e: Error) => {
      if (!this.db.noteFailure(e))
        this.logger.warn(`noting the use of "${token.name}": ${e.message}`);
    });
  }
}

/**
 * Compares two sha256 hex strings in constant time (every character is looked at, whatever
 * differs), without allocating: what timingSafeEqual does for buffers.
 */
export function sameHex(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}
