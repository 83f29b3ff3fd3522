import { describe, expect, it } from 'vitest';
import { RangeNotSatisfiableError } from '../common/errors';
import { contentRange, resolveRange } from './byte-range';

describe('resolveRange', () => {
  it.each([
    ['bytes=0-99', { start: 0, end: 99 }],
    ['bytes=100-', { start: 100, end: 999 }], // what Nix (curl) sends to resume
    ['bytes=990-5000', { start: 990, end: 999 }], // clipped to the file
    ['bytes=-10', { start: 990, end: 999 }],
    ['bytes=-5000', { start: 0, end: 999 }],
    ['bytes=999-999', { start: 999, end: 999 }],
    ['BYTES = 5 - 6', { start: 5, end: 6 }],
  ])('%s of 1000 bytes → %j', (header, range) => {
    expect(resolveRange(header, 1000)).toEqual(range);
  });

  it.each([
    [undefined, 1000],
    ['bytes=0-99', undefined], // length unknown: the whole file
    ['bytes=0-9,20-29', 1000], // several ranges: not served, whole file
    ['items=0-9', 1000],
    ['bytes=9-0', 1000], // malformed: ignored as the RFC says
    ['bytes=-', 1000],
    ['bytes=a-b', 1000],
    ['bytes=99999999999999999999-', 1000],
  ])('%s of %s bytes → the whole file', (header, length) => {
    expect(resolveRange(header, length)).toBeUndefined();
  });

  it.each(['bytes=1000-', 'bytes=5000-6000', 'bytes=-0'])(
    '%s of 1000 bytes is not satisfiable',
    (header) => {
      expect(() => resolveRange(header, 1000)).toThrow(RangeNotSatisfiableError);
      try {
        resolveRange(header, 1000);
      } catch (e) {
        expect((e as RangeNotSatisfiableError).length).toBe(1000);
      }
    },
  );

  it('formats Content-Range', () => {
    expect(contentRange({ start: 100, end: 999 }, 1000)).toBe('bytes 100-999/1000');
  });
});
