import { afterEach, describe, expect, it, vi } from 'vitest';
import { FLUSH_MS, LineBatch, MAX_BATCH_BYTES } from './line-batch';

/** A synchronous sink (as the batch requires) that keeps a copy of every chunk. */
function target() {
  const chunks: Buffer[] = [];
  return {
    chunks,
    get writes() {
      return chunks.map((c) => c.toString('utf8'));
    },
    stream: { write: (chunk: Buffer) => void chunks.push(Buffer.from(chunk)) },
  };
}

const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

afterEach(() => {
  vi.useRealTimers();
});

describe('LineBatch', () => {
  it('writes the lines of 10 ms together, 10 ms after the first', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout'] });
    const sink = target();
    const batch = new LineBatch(sink.stream);
    batch.write('a\n');
    await nextTurn(); // later turns of the event loop add to the same write
    batch.write('b\n');
    vi.advanceTimersByTime(FLUSH_MS - 1);
    batch.write('c\n');
    expect(sink.writes).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(sink.writes).toEqual(['a\nb\nc\n']);
    batch.write('d\n');
    vi.advanceTimersByTime(FLUSH_MS);
    expect(sink.writes).toEqual(['a\nb\nc\n', 'd\n']);
  });

  it('writes at once when 64 KiB are waiting', () => {
    const sink = target();
    const batch = new LineBatch(sink.stream);
    const line = `${'x'.repeat(1023)}\n`;
    for (let i = 0; i < 64; i++) batch.write(line);
    expect(sink.writes).toEqual([line.repeat(64)]);
  });

  it('writes what waits first when the next line does not fit, counting bytes, not characters', () => {
    const sink = target();
    const batch = new LineBatch(sink.stream);
    const wide = `${'€'.repeat(10_000)}\n`; // 30,001 bytes in UTF-8
    batch.write(wide);
    batch.write(wide);
    expect(sink.chunks).toHaveLength(0); // 60,002 bytes wait
    batch.write(wide); // would not fit: the first two go out, this one waits
    expect(sink.writes).toEqual([wide + wide]);
    batch.flush();
    expect(sink.writes).toEqual([wide + wide, wide]);
    expect(sink.chunks.map((c) => c.length)).toEqual([60_002, 30_001]);
  });

  it('writes a line longer than a whole batch on its own, after the lines before it', () => {
    const sink = target();
    const batch = new LineBatch(sink.stream);
    const long = `${'y'.repeat(MAX_BATCH_BYTES + 10)}\n`;
    batch.write('before\n');
    batch.write(long);
    batch.write('after\n');
    batch.flush();
    expect(sink.writes).toEqual(['before\n', long, 'after\n']);
  });

  it('hands each flush only the bytes written since the last one', () => {
    const seen: string[] = [];
    const batch = new LineBatch({ write: (chunk: Buffer) => void seen.push(chunk.toString()) });
    batch.write('a longer first line\n');
    batch.flush();
    batch.write('second\n');
    batch.flush();
    expect(seen).toEqual(['a longer first line\n', 'second\n']);
  });

  it('flush writes what is waiting, and nothing when nothing is', () => {
    const sink = target();
    const batch = new LineBatch(sink.stream);
    batch.flush();
    expect(sink.writes).toEqual([]);
    batch.write('last\n');
    batch.flush();
    expect(sink.writes).toEqual(['last\n']);
  });
});
