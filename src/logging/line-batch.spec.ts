import { describe, expect, it } from 'vitest';
import { LineBatch } from './line-batch';

function target() {
  const writes: string[] = [];
  return { writes, stream: { write: (text: string) => void writes.push(text) } };
}

const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

describe('LineBatch', () => {
  it('writes the lines of one turn of the event loop together, at the end of that turn', async () => {
    const { writes, stream } = target();
    const batch = new LineBatch(stream);
    batch.write('a\n');
    batch.write('b\n');
    batch.write('c\n');
    expect(writes).toEqual([]);
    await nextTurn();
    expect(writes).toEqual(['a\nb\nc\n']);
    batch.write('d\n');
    await nextTurn();
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
