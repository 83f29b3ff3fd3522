import { createToken } from '../../src/auth/token-admin';
import { TokenService } from '../../src/auth/token.service';
import type { Permission } from '../../src/common/access';
import { AccessTokenRepository } from '../../src/database/access-token.repository';
import type { Narwhal } from './narwhal-app';

/** Tokens for the module tests, made in the app's own database (as `narwhal token create` does). */

/** Makes a token with `permissions` (and a lifetime, when given); resolves the token. */
export async function makeToken(
  nw: Narwhal,
  name: string,
  permissions: Permission[],
  expiresInMs?: number,
): Promise<string> {
  const { token } = await createToken(nw.app.get(AccessTokenRepository), {
    name,
    permissions,
    expiresInMs,
  });
  return token;
}

/** Revokes a token (as `narwhal token revoke` does: in the database only). */
export async function revokeToken(nw: Narwhal, name: string): Promise<void> {
  await nw.app.get(AccessTokenRepository).revoke(name);
}

/** Makes the app forget what it learned about tokens (instead of waiting for the recheck). */
export function forgetTokens(nw: Narwhal): void {
  nw.app.get(TokenService).forgetAll();
}

/** `Authorization` of HTTP Basic auth with the token as the password (what Nix sends from netrc). */
export function basic(token: string, user = 'nix'): { authorization: string } {
  return { authorization: `Basic ${Buffer.from(`${user}:${token}`).toString('base64')}` };
}

export function bearer(token: string): { authorization: string } {
  return { authorization: `Bearer ${token}` };
}
