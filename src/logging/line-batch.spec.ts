import { afterEach, describe, expect, it, vi } from 'vitest';
import { FLUSH_MS, LineBatch } from './line-batch';

function target() {
  const writes: string[] = [];
  return { writes, stream: { write: (text: string) => void writes.push(text) } };
}

const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

afterEach(() => {
  vi.useRealTimers();
});

describe('LineBatch', () => {
  it('writes the lines of 10 ms together, 10 ms after the first', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout'] });
    const { writes, stream } = target();
    const batch = new LineBatch(stream);
    batch.write('a\n');
    await nextTurn(); // later turns of the event loop add to the same write
    batch.write('b\n');
    vi.advanceTimersByTime(FLUSH_MS - 1);
    batch.write('c\n');
    expect(writes).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(writes).toEqual(['a\nb\nc\n']);
    batch.write('d\n');
    vi.advanceTimersByTime(FLUSH_MS);
    expect(writes).toEqual(['a\nb\nc\n', 'd\n']);
  });

  it('writes at once when 64 KiB are waiting', () => {
    const { writes, stream } = target();
    const batch = new LineBatch(stream);
    const line = `${'x'.repeat(1023)}\n`;
    for (let i = 0; i < 64; i++) batch.write(line);
    expect(writes).toHaveLength(1);
    expect(writes[0]).toHaveLength(64 * 1024);
  });

  it('flush writes what is waiting, and nothing when nothing is', () => {
    const { writes, stream } = target();
    const batch = new LineBatch(stream);
    batch.flush();
    expect(writes).toEqual([]);
    batch.write('last\n');
    batch.flush();
    expect(writes).toEqual(['last\n']);
  });
});
