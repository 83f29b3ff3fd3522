import { describe, expect, it } from 'vitest';
import { sameHex } from './token.service';
import {
  checkTokenName,
  credentialsOf,
  generateToken,
  hashToken,
  looksLikeToken,
  parsePermissions,
} from './tokens';

const basic = (userPass: string) => `Basic ${Buffer.from(userPass).toString('base64')}`;

describe('tokens', () => {
  it('are nw_ and 43 base64url characters, random, and recognised by their shape', () => {
    const a = generateToken();
    const b = generateToken();
    expect(a).toMatch(/^nw_[A-Za-z0-9_-]{43}$/);
    expect(a).not.toBe(b);
    expect(looksLikeToken(a)).toBe(true);
    for (const s of ['', 'nw_', `nw_${'a'.repeat(42)}`, `xx_${'a'.repeat(43)}`, `${a} `]) {
      expect(looksLikeToken(s)).toBe(false);
    }
    expect(hashToken(a)).toMatch(/^[0-9a-f]{64}$/);
    expect(hashToken(a)).toBe(hashToken(a));
    expect(hashToken(a)).not.toBe(hashToken(b));
  });

  it('are read from the password of Basic auth (any user name) or a Bearer header', () => {
    const t = generateToken();
    expect(credentialsOf(basic(`nix:${t}`))).toEqual({ kind: 'token', token: t });
    expect(credentialsOf(basic(`:${t}`))).toEqual({ kind: 'token', token: t });
    expect(credentialsOf(basic(`a:b:${t}`))).toEqual({ kind: 'token', token: `b:${t}` });
    expect(credentialsOf(`basic ${Buffer.from(`u:${t}`).toString('base64')}`)).toEqual({
      kind: 'token',
      token: t,
    });
    expect(credentialsOf(`Bearer ${t}`)).toEqual({ kind: 'token', token: t });
    expect(credentialsOf(`bearer   ${t}  `)).toEqual({ kind: 'token', token: t });
  });

  it('tell no header from one that carries no token', () => {
    expect(credentialsOf(undefined)).toEqual({ kind: 'none' });
    expect(credentialsOf('')).toEqual({ kind: 'none' });
    for (const h of ['Basic', basic('nocolon'), basic('user:'), 'Bearer ', 'Digest x=1', 'token']) {
      expect(credentialsOf(h)).toEqual({ kind: 'malformed' });
    }
  });

  it('permissions are parsed into their canonical order; unknown ones are refused by name', () => {
    expect(parsePermissions('write,read')).toEqual(['read', 'write']);
    expect(parsePermissions(' pin , read,read ')).toEqual(['read', 'pin']);
    expect(parsePermissions('read,write,delete,pin,metrics')).toHaveLength(5);
    expect(() => parsePermissions('read,admin')).toThrow('unknown permission "admin"');
    expect(() => parsePermissions(',')).toThrow('no permission');
  });

  it('hashes are compared whole', () => {
    const h = hashToken(generateToken());
    expect(sameHex(h, h)).toBe(true);
    expect(sameHex(h, `${h.slice(0, -1)}${h.endsWith('0') ? '1' : '0'}`)).toBe(false);
    expect(sameHex(h, h.slice(1))).toBe(false);
  });

  it('names are short words', () => {
    expect(checkTokenName('ci-builder.1_a')).toBe('ci-builder.1_a');
    for (const bad of ['', 'a b', 'x'.repeat(65), 'ci/1', 'é']) {
      expect(() => checkTokenName(bad)).toThrow('token name');
    }
  });
});
