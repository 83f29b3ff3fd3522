import type { AppConfig } from '../config/app-config';
import { parseDuration } from '../config/units';
import { AccessTokenRepository } from '../database/access-token.repository';
import { openDataSource } from '../database/data-source';
import type { AccessTokenEntity } from '../database/entities';
import { createToken, TokenNameTakenError, type NewToken } from './token-admin';
import { checkTokenName, parsePermissions } from './tokens';

/** The flags of `narwhal token create` (commander's camelCase names). */
export interface TokenCreateFlags {
  name: string;
  perm: string;
  expires?: string;
}

type Out = Pick<NodeJS.WriteStream, 'write'>;

/**
 * `narwhal token create|list|revoke`: works on the database the settings name (migrating it first,
 * like `serve`). Resolves the exit code.
 */
export async function runTokenCommand(
  config: AppConfig,
  action: { create: TokenCreateFlags } | { list: true } | { revoke: string },
  out: Out = process.stdout,
  err: Out = process.stderr,
): Promise<number> {
  const ds = await openDataSource(config.database);
  try {
    const repo = new AccessTokenRepository(ds);
    if ('create' in action) {
      let made;
      try {
        made = await createToken(repo, specOf(action.create));
      } catch (e) {
        if (e instanceof TokenNameTakenError || e instanceof UsageError) {
          err.write(`narwhal: ${e.message}\n`);
          return 1;
        }
        throw e;
      }
      const { token, row } = made;
      // The token alone on stdout (for scripts); what it is on stderr.
      out.write(`${token}\n`);
      err.write(
        `token "${row.name}" (${row.permissions}) ${row.expiresAt === null ? 'does not expire' : `expires ${iso(row.expiresAt)}`}; it is shown only this once\n`,
      );
      return 0;
    }
    if ('list' in action) {
      out.write(formatTokens(await repo.list()));
      return 0;
    }
    if (!(await repo.revoke(action.revoke))) {
      err.write(`narwhal: there is no token named "${action.revoke}"\n`);
      return 1;
    }
    const within = Math.ceil(config.access.tokenRecheckMs / 1000);
    out.write(
      `revoked "${action.revoke}": every instance refuses it within ${within} s (--cache-token-recheck-interval)\n`,
    );
    return 0;
  } finally {
    await ds.destroy();
  }
}

/** `narwhal token list`: one line per token, never the token. */
export function formatTokens(rows: AccessTokenEntity[], now = Date.now()): string {
  const lines = [['NAME', 'PERMISSIONS', 'CREATED', 'LAST USED', 'EXPIRES']];
  for (const r of rows) {
    const expires =
      r.expiresAt === null
        ? 'never'
        : `${iso(r.expiresAt)}${r.expiresAt <= now ? ' (expired)' : ''}`;
    lines.push([
      r.name,
      r.permissions,
      iso(r.createdAt),
      r.lastUsedAt === null ? 'never' : iso(r.lastUsedAt),
      expires,
    ]);
  }
  const widths = lines[0].map((_, i) => Math.max(...lines.map((l) => l[i].length)));
  return lines
    .map(
      (l) =>
        `${l
          .map((c, i) => c.padEnd(widths[i]))
          .join('  ')
          .trimEnd()}\n`,
    )
    .join('');
}

function iso(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

const DAY_MS = 86_400_000;

/** A token's lifetime: `90d`, `2w`, or any duration the settings take (`12h`, `30m`). */
export function parseLifetime(text: string): number {
  const m = /^(\d+)([dw])$/.exec(text.trim());
  if (m) return Number(m[1]) * (m[2] === 'w' ? 7 : 1) * DAY_MS;
  try {
    return parseDuration(text);
  } catch {
    throw new Error(`"${text}" is not a lifetime (examples: 90d, 2w, 12h)`);
  }
}

/** A flag of the command is wrong: said plainly, without a stack. */
class UsageError extends Error {}

function specOf(flags: TokenCreateFlags): NewToken {
  const fail = (flag: string, e: unknown) => new UsageError(`${flag}: ${(e as Error).message}`);
  let permissions;
  try {
    permissions = parsePermissions(flags.perm);
  } catch (e) {
    throw fail('--perm', e);
  }
  let expiresInMs: number | undefined;
  if (flags.expires !== undefined) {
    try {
      expiresInMs = parseLifetime(flags.expires);
    } catch (e) {
      throw fail('--expires', e);
    }
    if (expiresInMs <= 0) throw new UsageError('--expires: must be longer than zero');
  }
  try {
    checkTokenName(flags.name);
  } catch (e) {
    throw fail('--name', e);
  }
  return { name: flags.name, permissions, expiresInMs };
}
