import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { withDeadline } from './deadline';

const wait = (ms: number) => new Promise((done) => setTimeout(done, ms));

describe('withDeadline', () => {
  it('aborts at the deadline with a TimeoutError, as AbortSignal.timeout does', async () => {
    const d = withDeadline(20);
    expect(d.signal.aborted).toBe(false);
    await wait(60);
    expect(d.signal.aborted).toBe(true);
    expect((d.signal.reason as Error).name).toBe('TimeoutError');
  });

  it("aborts with the parent's reason when the parent aborts first", () => {
    const parent = new AbortController();
    const d = withDeadline(10_000, parent.signal);
    const why = new Error('client left');
    parent.abort(why);
    expect(d.signal.aborted).toBe(true);
    expect(d.signal.reason).toBe(why);
    d.clear();
  });

  it('is aborted at once under a parent aborted already', () => {
    const parent = new AbortController();
    parent.abort(new Error('gone'));
    const d = withDeadline(10_000, parent.signal);
    expect(d.signal.aborted).toBe(true);
    expect((d.signal.reason as Error).message).toBe('gone');
    d.clear();
  });

  it('after clear, neither the deadline nor the parent aborts it, and nothing listens to the parent', async () => {
    const parent = new AbortController();
    const d = withDeadline(20, parent.signal);
    expect(getEventListeners(parent.signal, 'abort')).toHaveLength(1);
    d.clear();
    expect(getEventListeners(parent.signal, 'abort')).toHaveLength(0);
    await wait(60);
    parent.abort();
    expect(d.signal.aborted).toBe(false);
  });
});
