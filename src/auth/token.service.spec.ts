import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DataSource } from 'typeorm';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { AppConfig } from '../config/app-config';
import { AccessTokenRepository } from '../database/access-token.repository';
import { openDataSource } from '../database/data-source';
import { DatabaseHealth } from '../database/database-health';
import { createToken, TokenNameTakenError } from './token-admin';
import { TokenService } from './token.service';

/** TokenService on a real SQLite database: what it accepts, and how long it trusts its memory. */

let dir: string;
let ds: DataSource;
let repo: AccessTokenRepository;
let health: DatabaseHealth;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'narwhal-tokens-'));
  ds = await openDataSource({ kind: 'sqlite', path: join(dir, 'narwhal.sqlite') });
  repo = new AccessTokenRepository(ds);
  health = new DatabaseHealth(ds);
});

afterEach(async () => {
  health.onApplicationShutdown();
  if (ds.isInitialized) await ds.destroy();
  await rm(dir, { recursive: true, force: true });
});

function service(recheckMs: number): TokenService {
  const config = { access: { tokenRecheckMs: recheckMs } } as unknown as AppConfig;
  return new TokenService(config, repo, health);
}

const bearer = (t: string) => `Bearer ${t}`;

describe('TokenService', () => {
  it('accepts a recorded token with its permissions, and only a hash of it is in the database', async () => {
    const { token } = await createToken(repo, { name: 'ci', permissions: ['read', 'write'] });
    const check = await service(5000).authenticate(bearer(token));
    expect(check.kind).toBe('valid');
    if (check.kind !== 'valid') return;
    expect(check.token.name).toBe('ci');
    expect(check.token.permissions).toEqual(new Set(['read', 'write']));
    const rows = await ds.query<Record<string, unknown>[]>('SELECT * FROM access_tokens');
    expect(JSON.stringify(rows)).not.toContain(token);
    expect(JSON.stringify(rows)).not.toContain(token.slice(3));
  });

  it('refuses unknown, malformed and expired tokens, and says when there is none', async () => {
    const tokens = service(5000);
    const { token: old } = await createToken(repo, { name: 'old', permissions: ['read'] }, 1000);
    await ds.query('UPDATE access_tokens SET expires_at = 2000');
    expect(await tokens.authenticate(undefined)).toEqual({ kind: 'none' });
    expect(await tokens.authenticate(bearer(`nw_${'x'.repeat(43)}`))).toEqual({
      kind: 'invalid',
      why: 'unknown',
    });
    expect(await tokens.authenticate('Bearer hunter2')).toEqual({
      kind: 'invalid',
      why: 'malformed',
    });
    expect(await tokens.authenticate(bearer(old))).toEqual({
      kind: 'invalid',
      why: 'expired',
      name: 'old',
    });
  });

  it('names are unique', async () => {
    await createToken(repo, { name: 'ci', permissions: ['read'] });
    await expect(createToken(repo, { name: 'ci', permissions: ['write'] })).rejects.toThrow(
      TokenNameTakenError,
    );
    expect(await repo.list()).toHaveLength(1);
  });

  it('trusts what it learned for the recheck interval, then asks the database again', async () => {
    const { token } = await createToken(repo, { name: 'ci', permissions: ['read'] });
    const tokens = service(300);
    expect((await tokens.authenticate(bearer(token))).kind).toBe('valid');
    expect(await repo.revoke('ci')).toBe(true);
    // Within the interval the memory answers (no query); after it, the revocation shows.
    expect((await tokens.authenticate(bearer(token))).kind).toBe('valid');
    await new Promise((r) => setTimeout(r, 350));
    expect(await tokens.authenticate(bearer(token))).toEqual({ kind: 'invalid', why: 'unknown' });
    // A token made after a miss was remembered is found after the interval too.
    const unknown = `nw_${'y'.repeat(43)}`;
    expect((await tokens.authenticate(bearer(unknown))).kind).toBe('invalid');
  });

  it('with an interval of 0 asks the database every time', async () => {
    const { token } = await createToken(repo, { name: 'ci', permissions: ['read'] });
    const tokens = service(0);
    expect((await tokens.authenticate(bearer(token))).kind).toBe('valid');
    await repo.revoke('ci');
    expect((await tokens.authenticate(bearer(token))).kind).toBe('invalid');
  });

  it('keeps accepting a token it checked before while the database is down; others get 503', async () => {
    const { token } = await createToken(repo, { name: 'ci', permissions: ['read'] });
    const tokens = service(0);
    expect((await tokens.authenticate(bearer(token))).kind).toBe('valid');
    // The database goes away (as the driver reports a stopped server).
    repo.findByHash = () =>
      Promise.reject(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }));
    expect((await tokens.authenticate(bearer(token))).kind).toBe('valid');
    await expect(tokens.authenticate(bearer(`nw_${'z'.repeat(43)}`))).rejects.toThrow(
      'database is unavailable',
    );
  });

  it('records when a token was last used', async () => {
    const { token } = await createToken(repo, { name: 'ci', permissions: ['read'] });
    expect((await repo.findByName('ci'))?.lastUsedAt).toBeNull();
    await service(5000).authenticate(bearer(token));
    await new Promise((r) => setTimeout(r, 50));
    expect((await repo.findByName('ci'))?.lastUsedAt).toEqual(expect.any(Number));
  });
});
