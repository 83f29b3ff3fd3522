import { describe, expect, it } from 'vitest';
import { LocalNotices } from '../locking/notices';
import { RememberedNars, StoredNarMemory } from './stored-nar-memory';

const limits = { ttlMs: 1000, staleMs: 500, maxEntries: 3, maxFileBytes: 10, maxTotalBytes: 25 };
const bytes = (n: number, fill = 1) => Buffer.alloc(n, fill);

describe('StoredNarMemory', () => {
  it('remembers a stored NAR until its TTL, then forgets it', () => {
    const m = new StoredNarMemory(limits);
    m.remember('a', 5, 100, 0);
    expect(m.get('a', 999)).toMatchObject({ size: 5, touchedAt: 100 });
    expect(m.get('a', 1000)).toBeUndefined();
    expect(m.size).toBe(0);
  });

  it('lookup gives out an entry holding the bytes for staleMs past its TTL, marked stale', () => {
    const m = new StoredNarMemory(limits);
    m.remember('held', 5, 0, 0);
    m.keepBytes('held', bytes(5));
    m.remember('sized', 5, 0, 0); // known stored, bytes not held
    expect(m.lookup('held', 999)).toMatchObject({ stale: false });
    expect(m.lookup('held', 1000)).toMatchObject({ stale: true, entry: { size: 5 } });
    expect(m.lookup('held', 1499)?.entry.bytes?.length).toBe(5);
    // Without the bytes there is nothing to answer from: forgotten at the TTL, as get() does.
    expect(m.lookup('sized', 1000)).toBeUndefined();
    expect(m.lookup('held', 1500)).toBeUndefined();
    expect(m.size).toBe(0);
    expect(m.heldBytes).toBe(0);
  });

  it('renew makes a stale entry fresh, forgetEntry forgets it; neither touches a newer entry', () => {
    const m = new StoredNarMemory(limits);
    m.remember('a', 5, 0, 0);
    m.keepBytes('a', bytes(5));
    const stale = m.lookup('a', 1200)!.entry;
    m.renew('a', stale, 1200);
    expect(m.lookup('a', 2199)).toMatchObject({ stale: false });
    m.forgetEntry('a', stale);
    expect(m.lookup('a', 1300)).toBeUndefined();
    // An entry remembered again meanwhile is not the one that was checked: left alone.
    m.remember('b', 5, 0, 0);
    m.keepBytes('b', bytes(5));
    const old = m.lookup('b', 1100)!.entry;
    m.remember('b', 5, 0, 1100);
    m.forgetEntry('b', old);
    m.renew('b', old, 5000);
    expect(m.lookup('b', 1200)).toMatchObject({ stale: false });
    // Its own TTL (from 1100): stale at 2100, where old's renewal would have made it fresh.
    expect(m.lookup('b', 2100)).toMatchObject({ stale: true });
  });

  it('keeps the bytes of small files only, and only when they match the size', () => {
    const m = new StoredNarMemory(limits);
    m.remember('small', 8, 0, 0);
    m.remember('large', 11, 0, 0);
    m.keepBytes('small', bytes(7)); // not its size
    m.keepBytes('large', bytes(11)); // too large
    expect(m.get('small', 1)?.bytes).toBeUndefined();
    expect(m.get('large', 1)?.bytes).toBeUndefined();
    m.keepBytes('small', bytes(8));
    expect(m.get('small', 1)?.bytes?.length).toBe(8);
    expect(m.heldBytes).toBe(8);
    m.keepBytes('unknown', bytes(3)); // not remembered: ignored
    expect(m.heldBytes).toBe(8);
  });

  it('holds at most maxTotalBytes, dropping the bytes of the least recently served first', () => {
    const m = new StoredNarMemory({ ...limits, maxEntries: 10 });
    for (const k of ['a', 'b', 'c']) {
      m.remember(k, 10, 0, 0);
      m.keepBytes(k, bytes(10));
    }
    // a and b fit (20), c pushed a's bytes out (the oldest); a is still known to be stored.
    expect(m.heldBytes).toBe(20);
    expect(m.get('a', 1)?.bytes).toBeUndefined();
    expect(m.get('a', 1)?.size).toBe(10);
    // b served again: now c is the least recent, and loses its bytes when a's come back.
    m.touch('b', m.get('b', 1)!);
    m.keepBytes('a', bytes(10));
    expect(m.get('c', 1)?.bytes).toBeUndefined();
    expect(m.get('b', 1)?.bytes?.length).toBe(10);
    expect(m.heldBytes).toBe(20);
  });

  it('remembers at most maxEntries NARs and releases the bytes of those it forgets', () => {
    const m = new StoredNarMemory(limits);
    for (const k of ['a', 'b', 'c', 'd']) {
      m.remember(k, 5, 0, 0);
      m.keepBytes(k, bytes(5));
    }
    expect(m.size).toBe(3);
    expect(m.get('a', 1)).toBeUndefined();
    expect(m.heldBytes).toBe(15);
    m.forget('b');
    expect(m.heldBytes).toBe(10);
  });

  it('remembering a NAR again keeps its bytes when the size is unchanged', () => {
    const m = new StoredNarMemory(limits);
    m.remember('a', 5, 0, 0);
    m.keepBytes('a', bytes(5));
    m.remember('a', 5, 50, 10);
    expect(m.get('a', 11)).toMatchObject({ touchedAt: 50 });
    expect(m.get('a', 11)?.bytes?.length).toBe(5);
    expect(m.heldBytes).toBe(5);
  });
});

describe('RememberedNars', () => {
  it('forgetEverywhere forgets here at once and tells the other instances', async () => {
    const notices = new LocalNotices(); // stands for the deployment's channel
    const here = new RememberedNars(notices);
    const there = new RememberedNars(notices);
    for (const m of [here, there]) m.remember('x.nar.xz', 5, 0, Date.now());
    await here.forgetEverywhere('x.nar.xz');
    expect(here.get('x.nar.xz', Date.now())).toBeUndefined();
    expect(there.get('x.nar.xz', Date.now())).toBeUndefined();
  });
});
