import { describe, expect, it } from 'vitest';
import { basicAuthorization, parseNetrc } from './netrc';

describe('parseNetrc', () => {
  it('reads machine entries on one line or several, first entry per host wins', () => {
    const netrc = parseNetrc(
      [
        'machine cache.example.org login alice password s3cret',
        '# a comment',
        'machine Private.Example',
        '  login bob',
        '  password "pass word\\"q"',
        '  account ignored',
        'machine cache.example.org login mallory password other',
      ].join('\n'),
    );
    expect([...netrc.keys()]).toEqual(['cache.example.org', 'private.example']);
    expect(netrc.get('cache.example.org')).toEqual({ login: 'alice', password: 's3cret' });
    expect(netrc.get('private.example')).toEqual({ login: 'bob', password: 'pass word"q' });
  });

  it('ignores default entries and macdef bodies', () => {
    const netrc = parseNetrc(
      'macdef init\nmachine fake login x password y\n\ndefault login anon password guest\n',
    );
    expect(netrc.size).toBe(0);
  });

  it('rejects malformed files with a reason', () => {
    expect(() => parseNetrc('machine a login')).toThrow(/no value/);
    expect(() => parseNetrc('login x')).toThrow(/before any "machine"/);
    expect(() => parseNetrc('machine a bogus x')).toThrow(/unexpected token/);
    expect(() => parseNetrc('machine a password "open')).toThrow(/not closed/);
  });

  it('makes a basic authorization header', () => {
    expect(basicAuthorization({ login: 'u', password: 'p:w' })).toBe(
      `Basic ${Buffer.from('u:p:w').toString('base64')}`,
    );
  });
});
