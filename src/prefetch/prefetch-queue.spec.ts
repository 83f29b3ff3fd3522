import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { PrefetchQueue, type PrefetchJob, type PrefetchKind } from './prefetch-queue';

/** A job that runs until released, recording when it started. */
function gatedJob(
  kind: PrefetchKind,
  key: string,
  log: string[],
  canStart: () => boolean = () => true,
): PrefetchJob & { release: () => void; signal?: AbortSignal } {
  let release: () => void = () => undefined;
  const gate = new Promise<void>((done) => (release = done));
  const job = {
    kind,
    key,
    canStart,
    release: () => release(),
    signal: undefined as AbortSignal | undefined,
    run: async (signal: AbortSignal) => {
      job.signal = signal;
      log.push(key);
      await Promise.race([
        gate,
        new Promise<void>((done) => signal.addEventListener('abort', () => done())),
      ]);
    },
  };
  return job;
}

const flush = () => new Promise((done) => setImmediate(done));

describe('PrefetchQueue', () => {
  it('runs at most `concurrency` jobs at once, first in first out, and starts the next as one ends', async () => {
    const q = new PrefetchQueue({ concurrency: 2, maxQueued: 100, retryMs: 5 });
    const log: string[] = [];
    const jobs = ['a', 'b', 'c', 'd'].map((k) => gatedJob('narinfo', k, log));
    for (const j of jobs) expect(q.add(j)).toBe('queued');
    await flush();
    expect(log).toEqual(['a', 'b']);
    expect(q.running).toBe(2);
    expect(q.queued).toBe(2);
    jobs[1].release();
    await flush();
    expect(log).toEqual(['a', 'b', 'c']);
    jobs[0].release();
    jobs[2].release();
    jobs[3].release();
    await flush();
    await flush();
    expect(log).toEqual(['a', 'b', 'c', 'd']);
    expect(q.running).toBe(0);
  });

  it('refuses a key that waits or runs, and a job beyond maxQueued', async () => {
    const q = new PrefetchQueue({ concurrency: 1, maxQueued: 1, retryMs: 5 });
    const log: string[] = [];
    const a = gatedJob('narinfo', 'a', log);
    expect(q.add(a)).toBe('queued');
    expect(q.add(gatedJob('narinfo', 'a', log))).toBe('duplicate'); // running
    expect(q.add(gatedJob('narinfo', 'b', log))).toBe('queued');
    expect(q.add(gatedJob('narinfo', 'b', log))).toBe('duplicate'); // waiting
    expect(q.add(gatedJob('narinfo', 'c', log))).toBe('full');
    a.release();
    await flush();
    await flush();
    expect(q.has('a')).toBe(false);
    expect(q.add(gatedJob('narinfo', 'a', log))).toBe('queued'); // may run again later
  });

  it('starts narinfo lookups before NAR downloads and leaves one slot to lookups', async () => {
    const q = new PrefetchQueue({ concurrency: 3, maxQueued: 100, retryMs: 5 });
    const log: string[] = [];
    const nars = ['n1', 'n2', 'n3'].map((k) => gatedJob('nar', k, log));
    for (const j of nars) q.add(j);
    await flush();
    expect(log).toEqual(['n1', 'n2']); // the third slot stays free for lookups
    const lookup = gatedJob('narinfo', 'i1', log);
    q.add(lookup);
    await flush();
    expect(log).toEqual(['n1', 'n2', 'i1']);
    q.add(gatedJob('narinfo', 'i2', log));
    nars[0].release();
    await flush();
    await flush();
    expect(log).toEqual(['n1', 'n2', 'i1', 'i2']); // the freed slot goes to the waiting lookup
    lookup.release();
    await flush();
    await flush();
    expect(log).toEqual(['n1', 'n2', 'i1', 'i2', 'n3']);
    await q.stop(100);
  });

  it('while NAR downloads wait, lookups take no more than half of the slots', async () => {
    const q = new PrefetchQueue({ concurrency: 4, maxQueued: 100, retryMs: 5 });
    const log: string[] = [];
    const lookups = ['i1', 'i2', 'i3', 'i4', 'i5'].map((k) => gatedJob('narinfo', k, log));
    for (const j of lookups) q.add(j);
    q.add(gatedJob('nar', 'n1', log));
    q.add(gatedJob('nar', 'n2', log));
    await flush();
    expect(log).toEqual(['i1', 'i2', 'i3', 'i4']); // nothing else waited: all slots to lookups
    lookups[0].release();
    await flush();
    await flush();
    expect(log).toEqual(['i1', 'i2', 'i3', 'i4', 'n1']); // 3 lookups run, NARs wait: a NAR
    lookups[1].release();
    await flush();
    await flush();
    expect(log).toEqual(['i1', 'i2', 'i3', 'i4', 'n1', 'n2']); // still 2 lookups of 4 slots
    lookups[2].release();
    await flush();
    await flush();
    expect(log).toEqual(['i1', 'i2', 'i3', 'i4', 'n1', 'n2', 'i5']);
    await q.stop(100);
  });

  it('holds a job back while canStart says no, and starts it once it says yes', async () => {
    const q = new PrefetchQueue({ concurrency: 4, maxQueued: 100, retryMs: 5 });
    const log: string[] = [];
    let busy = true;
    const j = gatedJob('narinfo', 'a', log, () => !busy);
    q.add(j);
    await flush();
    expect(log).toEqual([]);
    expect(q.queued).toBe(1);
    busy = false;
    await new Promise((done) => setTimeout(done, 30));
    expect(log).toEqual(['a']);
    j.release();
    await q.stop(100);
  });

  it('stop drops waiting jobs, aborts running ones, and refuses new ones', async () => {
    const q = new PrefetchQueue({ concurrency: 1, maxQueued: 100, retryMs: 5 });
    const log: string[] = [];
    const a = gatedJob('narinfo', 'a', log);
    q.add(a);
    q.add(gatedJob('narinfo', 'b', log));
    await flush();
    expect(await q.stop(1000)).toBe(0);
    expect(a.signal?.aborted).toBe(true);
    expect(log).toEqual(['a']);
    expect(q.queued).toBe(0);
    expect(q.add(gatedJob('narinfo', 'c', log))).toBe('stopped');
  });

  it('gives each job a signal of its own: what finished jobs left listening does not pile up', async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on('warning', onWarning);
    try {
      const q = new PrefetchQueue({ concurrency: 2, maxQueued: 100, retryMs: 5 });
      const log: string[] = [];
      // Each job leaves a listener behind on its signal, as a careless job (or a fetch) may.
      const jobs = Array.from({ length: 30 }, (_, i) => gatedJob('narinfo', `k${i}`, log));
      for (const j of jobs) q.add(j);
      for (let i = 0; i < jobs.length - 1; i++) {
        await flush();
        jobs[i].release();
      }
      await flush();
      const last = jobs[jobs.length - 1];
      expect(log).toHaveLength(30);
      expect(new Set(jobs.map((j) => j.signal)).size).toBe(30);
      // The running job's signal holds only its own listener, not the 29 before it.
      expect(getEventListeners(last.signal!, 'abort')).toHaveLength(1);
      expect(await q.stop(1000)).toBe(0);
      expect(last.signal?.aborted).toBe(true);
      // A finished job's signal is not aborted at stop: nothing listens for it any more.
      expect(jobs[0].signal?.aborted).toBe(false);
      await flush();
      expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });
});
