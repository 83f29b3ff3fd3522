import type { Permission } from '../common/access';
import type { AccessTokenRepository } from '../database/access-token.repository';
import type { AccessTokenEntity } from '../database/entities';
import { checkTokenName, generateToken, hashToken } from './tokens';

export interface NewToken {
  name: string;
  permissions: Permission[];
  /** Lifetime from now; none: until revoked. */
  expiresInMs?: number;
}

/** The token was not made: its name is taken. */
export class TokenNameTakenError extends Error {
  override name = 'TokenNameTakenError';
}

/**
 * Makes a token and records its hash: resolves the token (to show once; it is not kept anywhere)
 * and the recorded row. Throws TokenNameTakenError when the name is in use.
 */
export async function createToken(
  repo: AccessTokenRepository,
  spec: NewToken,
  now = Date.now(),
): Promise<{ token: string; row: AccessTokenEntity }> {
  checkTokenName(spec.name);
  const token = generateToken();
  const row: AccessTokenEntity = {
    name: spec.name,
    tokenHash: hashToken(token),
    permissions: spec.permissions.join(','),
    createdAt: now,
    expiresAt: spec.expiresInMs === undefined ? null : now + spec.expiresInMs,
    lastUsedAt: null,
  };
  if (!(await repo.create(row))) {
    throw new TokenNameTakenError(`a token named "${spec.name}" exists; revoke it first`);
  }
  return { token, row };
}
