import { describe, expect, it } from 'vitest';
import { currentRequestId, runInRequestContext } from '../logging/request-context';
import { inBackground, isBackground } from '../upstream/background';

const tick = () => new Promise((done) => setImmediate(done));

describe('the async context (request id and background mark in one store)', () => {
  it('a request context carries its id through awaits, and is not background work', async () => {
    expect(currentRequestId()).toBeUndefined();
    await runInRequestContext({ reqId: 'r1' }, async () => {
      await tick();
      expect(currentRequestId()).toBe('r1');
      expect(isBackground()).toBe(false);
    });
    expect(currentRequestId()).toBeUndefined();
  });

  it('background work started in a request keeps its id and is marked, and the request is not', async () => {
    await runInRequestContext({ reqId: 'r2' }, async () => {
      const seen = await inBackground(async () => {
        await tick();
        return { id: currentRequestId(), background: isBackground() };
      });
      expect(seen).toEqual({ id: 'r2', background: true });
      await tick();
      expect(isBackground()).toBe(false);
      expect(currentRequestId()).toBe('r2');
    });
  });

  it('background work outside any request is marked, without an id; what it starts stays marked', async () => {
    const seen: boolean[] = [];
    await inBackground(async () => {
      await new Promise<void>((done) =>
        setTimeout(() => {
          seen.push(isBackground());
          done();
        }, 1),
      );
      expect(currentRequestId()).toBeUndefined();
    });
    expect(seen).toEqual([true]);
    expect(isBackground()).toBe(false);
  });
});
