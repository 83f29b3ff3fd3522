import { describe, expect, it } from 'vitest';
import { formatPretty } from './pretty';

describe('formatPretty', () => {
  it('puts time, level, context and message first, other fields as key=value, reqId last', () => {
    const line = JSON.stringify({
      level: 'info',
      time: '2026-01-02T03:04:05.678Z',
      pid: 1,
      hostname: 'h',
      reqId: 'r-1',
      context: 'narinfo',
      msg: 'cached x.narinfo',
      statusCode: 200,
      url: '/x.narinfo',
    });
    expect(formatPretty(line)).toBe(
      '03:04:05.678 INFO  [narinfo] cached x.narinfo statusCode=200 url=/x.narinfo reqId=r-1\n',
    );
  });

  it('prints an error’s stack, indented, below the line', () => {
    const line = JSON.stringify({
      level: 'error',
      time: '2026-01-02T03:04:05.678Z',
      msg: 'boom',
      err: { type: 'Error', message: 'boom', stack: 'Error: boom\n    at x' },
    });
    expect(formatPretty(line)).toBe('03:04:05.678 ERROR boom\n  Error: boom\n      at x\n');
  });

  it('colours the level when asked to', () => {
    const out = formatPretty(JSON.stringify({ level: 'warn', time: 'T', msg: 'm' }), true);
    expect(out).toContain('\x1b[33mWARN ');
  });

  it('passes a line that is not JSON through', () => {
    expect(formatPretty('plain text')).toBe('plain text\n');
  });
});
