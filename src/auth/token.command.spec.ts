import { describe, expect, it } from 'vitest';
import type { AccessTokenEntity } from '../database/entities';
import { formatTokens, parseLifetime } from './token.command';

const DAY = 86_400_000;

describe('narwhal token', () => {
  it('takes lifetimes in days and weeks, or any duration', () => {
    expect(parseLifetime('90d')).toBe(90 * DAY);
    expect(parseLifetime('2w')).toBe(14 * DAY);
    expect(parseLifetime('12h')).toBe(12 * 3_600_000);
    expect(parseLifetime('1h30m')).toBe(90 * 60_000);
    for (const bad of ['', 'soon', '1y', '-1d', '3 days']) {
      expect(() => parseLifetime(bad)).toThrow('is not a lifetime');
    }
  });

  it('lists names, permissions and times, never the token', () => {
    const rows: AccessTokenEntity[] = [
      {
        name: 'ci',
        tokenHash: 'a'.repeat(64),
        permissions: 'read,write',
        createdAt: Date.UTC(2026, 0, 2, 3, 4, 5),
        expiresAt: Date.UTC(2026, 3, 2),
        lastUsedAt: null,
      },
      {
        name: 'old',
        tokenHash: 'b'.repeat(64),
        permissions: 'read',
        createdAt: 0,
        expiresAt: 1000,
        lastUsedAt: 500,
      },
    ];
    const text = formatTokens(rows, Date.UTC(2026, 1, 1));
    expect(text.split('\n')).toEqual([
      'NAME  PERMISSIONS  CREATED               LAST USED             EXPIRES',
      'ci    read,write   2026-01-02T03:04:05Z  never                 2026-04-02T00:00:00Z',
      'old   read         1970-01-01T00:00:00Z  1970-01-01T00:00:00Z  1970-01-01T00:00:01Z (expired)',
      '',
    ]);
    expect(text).not.toContain('aaaa');
  });
});
