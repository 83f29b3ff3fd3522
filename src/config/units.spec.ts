import { describe, expect, it } from 'vitest';
import { formatSize, parseDuration, parseSize } from './units';

const KiB = 1024;
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const TiB = 1024 ** 4;

describe('parseDuration', () => {
  it.each([
    ['250ms', 250],
    ['3s', 3_000],
    ['5m', 300_000],
    ['2h', 7_200_000],
    ['1h30m', 5_400_000],
    ['1m5s', 65_000],
    ['1h1m1s1ms', 3_661_001],
    ['1.5s', 1_500],
    ['0.25m', 15_000],
    ['1500', 1_500],
    ['0', 0],
    ['  5m  ', 300_000],
  ])('%j is %d ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it('tells "m" (minutes) from "ms" (milliseconds)', () => {
    expect(parseDuration('5m')).toBe(5 * 60_000);
    expect(parseDuration('5ms')).toBe(5);
    expect(parseDuration('5m5ms')).toBe(5 * 60_000 + 5);
  });

  it('rounds fractional milliseconds', () => {
    expect(parseDuration('1.0004s')).toBe(1_000);
    expect(parseDuration('1.0006s')).toBe(1_001);
  });

  it.each([
    '',
    '   ',
    'soon',
    's',
    'ms',
    '5x',
    '5 s',
    '3s junk',
    'junk 3s',
    '1h30',
    '-1s',
    '+1s',
    '1d',
    '1.s',
    '.5s',
    '3S',
  ])('rejects %j with a message that quotes it', (text) => {
    expect(() => parseDuration(text)).toThrow(/is not a duration/);
    expect(() => parseDuration(text)).toThrow(JSON.stringify(text));
  });
});

describe('parseSize', () => {
  it.each([
    ['4096', 4096],
    ['0', 0],
    ['100B', 100],
    ['1K', KiB],
    ['1KB', KiB],
    ['1KiB', KiB],
    ['500M', 500 * MiB],
    ['500MB', 500 * MiB],
    ['10G', 10 * GiB],
    ['10GiB', 10 * GiB],
    ['1T', TiB],
    ['2TB', 2 * TiB],
    ['1.5T', 1.5 * TiB],
    ['0.5K', 512],
    ['10g', 10 * GiB],
    ['10gib', 10 * GiB],
    ['10 M', 10 * MiB],
    ['  7G ', 7 * GiB],
  ])('%j is %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it('uses binary multiples (a G is 1024 M)', () => {
    expect(parseSize('1G')).toBe(parseSize('1024M'));
    expect(parseSize('1M')).toBe(parseSize('1024K'));
    expect(parseSize('1T')).toBe(parseSize('1024G'));
  });

  it('floors to whole bytes', () => {
    expect(parseSize('1.0001K')).toBe(1024);
    expect(parseSize('0.3')).toBe(0);
  });

  it.each([
    '',
    'G',
    'big',
    '10X',
    '10 GB B',
    '-1G',
    '+1G',
    '1.2.3M',
    '1e3',
    '10PB',
    '0x10',
    '1,5G',
  ])('rejects %j with a message that quotes it', (text) => {
    expect(() => parseSize(text)).toThrow(/is not a size/);
    expect(() => parseSize(text)).toThrow(JSON.stringify(text));
  });
});

describe('formatSize', () => {
  it.each([
    [0, '0 B'],
    [1, '1 B'],
    [1023, '1023 B'],
    [1024, '1.0 KiB'],
    [1536, '1.5 KiB'],
    [MiB - 1, '1024.0 KiB'],
    [MiB, '1.0 MiB'],
    [10 * GiB, '10.0 GiB'],
    [1.25 * TiB, '1.3 TiB'],
    [5 * 1024 * TiB, '5120.0 TiB'],
  ])('%d bytes is %j', (bytes, text) => {
    expect(formatSize(bytes)).toBe(text);
  });

  it('prints what parseSize read', () => {
    expect(formatSize(parseSize('10G'))).toBe('10.0 GiB');
    expect(formatSize(parseSize('500M'))).toBe('500.0 MiB');
    expect(formatSize(parseSize('4096'))).toBe('4.0 KiB');
  });
});
