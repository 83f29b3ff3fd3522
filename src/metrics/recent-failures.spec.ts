import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { RECENT_FAILURES_KEPT, RecentFailures, scrubUrls } from './recent-failures';

const UP = 'https://cache.example.org';

beforeEach(() => vi.useFakeTimers({ now: Date.parse('2026-11-27T10:00:00Z') }));
afterEach(() => vi.useRealTimers());

describe('RecentFailures', () => {
  it('keeps failures newest first', () => {
    const f = new RecentFailures();
    f.record('bad-signature', { upstream: UP, subject: 'a.narinfo', message: 'unsigned' });
    vi.advanceTimersByTime(1000);
    f.record('hash-mismatch', {
      upstream: UP,
      subject: 'nar/x.nar.xz',
      message: 'NAR hashes to y',
    });
    expect(f.list()).toEqual([
      {
        kind: 'hash-mismatch',
        upstream: UP,
        subject: 'nar/x.nar.xz',
        message: 'NAR hashes to y',
        count: 1,
        firstAt: '2026-11-27T10:00:01.000Z',
        at: '2026-11-27T10:00:01.000Z',
      },
      {
        kind: 'bad-signature',
        upstream: UP,
        subject: 'a.narinfo',
        message: 'unsigned',
        count: 1,
        firstAt: '2026-11-27T10:00:00.000Z',
        at: '2026-11-27T10:00:00.000Z',
      },
    ]);
  });

  it('counts a repeated failure once, moved to the front with its latest subject', () => {
    const f = new RecentFailures();
    f.record('upstream-error', { upstream: UP, subject: 'a.narinfo', message: 'HTTP 503' });
    f.record('bad-signature', { upstream: UP, subject: 'b.narinfo', message: 'unsigned' });
    vi.advanceTimersByTime(5000);
    f.record('upstream-error', { upstream: UP, subject: 'c.narinfo', message: 'HTTP 503' });
    const [first, second] = f.list();
    expect(first).toMatchObject({
      kind: 'upstream-error',
      subject: 'c.narinfo',
      count: 2,
      firstAt: '2026-11-27T10:00:00.000Z',
      at: '2026-11-27T10:00:05.000Z',
    });
    expect(second.kind).toBe('bad-signature');
    expect(f.list()).toHaveLength(2);
    // Another upstream or message is another entry.
    f.record('upstream-error', {
      upstream: 'https://b.example',
      subject: 'c',
      message: 'HTTP 503',
    });
    f.record('upstream-error', { upstream: UP, subject: 'c', message: 'HTTP 502' });
    expect(f.list()).toHaveLength(4);
  });

  it(`keeps the latest ${RECENT_FAILURES_KEPT} and drops older ones`, () => {
    const f = new RecentFailures();
    for (let i = 0; i < RECENT_FAILURES_KEPT + 10; i++) {
      f.record('download-failed', { subject: `nar/${i}.nar`, message: `broke at ${i}` });
    }
    const kept = f.list();
    expect(kept).toHaveLength(RECENT_FAILURES_KEPT);
    expect(kept[0].subject).toBe(`nar/${RECENT_FAILURES_KEPT + 9}.nar`);
    expect(kept.at(-1)!.subject).toBe('nar/10.nar');
    expect(kept[0].upstream).toBeNull();
  });

  it('never keeps credentials, query strings or fragments of URLs, and clips long text', () => {
    const f = new RecentFailures();
    f.record('download-failed', {
      upstream: 'https://user:pass@cache.example.org',
      subject: 'https://cdn.example/nar/x.nar?X-Amz-Signature=abc&token=t',
      message: `fetching https://u:p@cdn.example/a?token=t#frag failed ${'x'.repeat(1000)}`,
    });
    const [e] = f.list();
    expect(e.upstream).toBe('https://cache.example.org');
    expect(e.subject).toBe('https://cdn.example/nar/x.nar');
    expect(e.message.startsWith('fetching https://cdn.example/a failed xxx')).toBe(true);
    expect(e.message.length).toBeLessThanOrEqual(300);
    expect(JSON.stringify(e)).not.toMatch(/pass|token|Signature|frag|u:p/);
  });

  it('hands out copies', () => {
    const f = new RecentFailures();
    f.record('bad-signature', { upstream: UP, subject: 'a.narinfo', message: 'unsigned' });
    f.list()[0].count = 99;
    expect(f.list()[0].count).toBe(1);
  });
});

describe('scrubUrls', () => {
  it.each([
    ['https://u:p@host/x?y=1', 'https://host/x'],
    [
      'see http://host:8080/a/b#c and s3://k@bucket/key?v=2',
      'see http://host:8080/a/b and s3://bucket/key',
    ],
    ['no url here: ECONNREFUSED 127.0.0.1:9', 'no url here: ECONNREFUSED 127.0.0.1:9'],
    ['HTTP 503', 'HTTP 503'],
  ])('%s → %s', (input, output) => {
    expect(scrubUrls(input)).toBe(output);
  });
});
