import { describe, expect, it } from 'vitest';
import { isPlainPath } from './plain-path';

describe('isPlainPath', () => {
  it('takes one route parameter of visible ASCII, as Fastify would pass it on unchanged', () => {
    expect(isPlainPath('/7jjp6j91fg248a4s2g0d8x2ncr84xc8v.narinfo', 1)).toBe(true);
    expect(isPlainPath('/nar/05sl0mi4dsxjx3fizqbb1sfxxckksq4mmdkfsqmwwmrq5p1ji9i9.nar.xz', 5)).toBe(
      true,
    );
    expect(isPlainPath(`/${'a'.repeat(100)}`, 1)).toBe(true);
  });

  it('refuses what Fastify would decode, strip, route elsewhere or not route at all', () => {
    expect(isPlainPath('/', 1)).toBe(false); // empty
    expect(isPlainPath(`/${'a'.repeat(101)}`, 1)).toBe(false); // over maxParamLength: 404
    expect(isPlainPath('/a.narinfo?x=1', 1)).toBe(false); // a query
    expect(isPlainPath('/a%2enarinfo', 1)).toBe(false); // an escape
    expect(isPlainPath('/nar/a/b.nar', 5)).toBe(false); // a deeper path
    expect(isPlainPath('/a.narinfo#x', 1)).toBe(false);
    expect(isPlainPath('/a;b.narinfo', 1)).toBe(false);
    expect(isPlainPath('/a\u00e9.narinfo', 1)).toBe(false);
    expect(isPlainPath('/a b.narinfo', 1)).toBe(false);
  });
});
