import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RawSettings } from '../../src/config/app-config';
import { PrefetchService } from '../../src/prefetch/prefetch.service';
import { FakeUpstream } from '../support/fake-upstream';
import {
  narInfoStored,
  startNarwhal,
  storedSize,
  uncaughtDuring,
  useNarwhal,
  waitStored,
  type Narwhal,
} from '../support/narwhal-app';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, type StorePathFixture } from '../support/store-paths';
import { eventually } from '../support/wait';

/**
 * Closure prefetch (src/prefetch/): narinfos of the References of a fetched narinfo are fetched in
 * the background, recursively, bounded, skipping what is known and verified like any lookup; the
 * NAR of a narinfo a client asked for is downloaded before the client asks for it; and all of it
 * stops cleanly with the application.
 */

const key = makeKey('up-prefetch-1');
const untrusted = makeKey('evil-1');

function settings(upstream: FakeUpstream, more: RawSettings = {}): RawSettings {
  return {
    'cache-upstream-url': upstream.url,
    'cache-upstream-public-key': key.publicText,
    'cache-upstream-response-header-timeout': '5s',
    ...more,
  };
}

/** A path referencing `refs` (fixtures), published on `upstream`. */
async function publishPath(
  upstream: FakeUpstream,
  refs: StorePathFixture[] = [],
  opts: { signedBy?: typeof key; delayMs?: number } = {},
): Promise<StorePathFixture> {
  const f = await makeStorePath([opts.signedBy ?? key], {
    references: refs.map((r) => r.storePath.slice('/nix/store/'.length)),
  });
  upstream.publish(f);
  if (opts.delayMs) upstream.setNarInfo(f.hash, f.narInfo, { delayMs: opts.delayMs });
  return f;
}

async function publishLeaves(
  upstream: FakeUpstream,
  n: number,
  opts: { delayMs?: number } = {},
): Promise<StorePathFixture[]> {
  return Promise.all(Array.from({ length: n }, () => publishPath(upstream, [], opts)));
}

/** Waits until no prefetch waits or runs. */
async function prefetchIdle(nw: Narwhal, timeoutMs = 20_000): Promise<void> {
  const prefetch = nw.app.get(PrefetchService);
  await eventually(
    () => prefetch.state.queued === 0 && prefetch.state.running === 0,
    timeoutMs,
    'prefetch idle',
  );
}

const narinfoGets = (u: FakeUpstream, f: StorePathFixture) => u.count('GET', `/${f.hash}.narinfo`);

describe('narinfo prefetch', () => {
  const upstream = new FakeUpstream();
  const nw = useNarwhal([upstream], () => settings(upstream, { 'cache-prefetch-nars': 'false' }));

  it('after a client miss, the narinfos of the whole closure are stored without a client asking', async () => {
    const [c, d] = await publishLeaves(upstream, 2);
    const a = await publishPath(upstream, [c]);
    const b = await publishPath(upstream, [c, d]); // c is referenced twice
    const top = await publishPath(upstream, [a, b]);
    expect((await nw.app.inject({ method: 'GET', url: `/${top.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    await eventually(
      () => [a, b, c, d].every((f) => narInfoStored(nw, f.hash)),
      10_000,
      'closure stored',
    );
    await prefetchIdle(nw);
    // Each narinfo of the closure was fetched once; no NAR was fetched (NAR prefetch is off here).
    expect([top, a, b, c, d].map((f) => narinfoGets(upstream, f))).toEqual([1, 1, 1, 1, 1]);
    expect(upstream.narGets()).toBe(0);
    // The client's lookups are now hits.
    for (const f of [a, b, c, d]) {
      expect((await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` })).statusCode).toBe(
        200,
      );
    }
    expect([a, b, c, d].map((f) => narinfoGets(upstream, f))).toEqual([1, 1, 1, 1]);
  });

  it('skips what is known: stored, remembered as missing, being looked up by a client', async () => {
    const stored = await publishPath(upstream);
    const slow = await publishPath(upstream, [], { delayMs: 400 });
    const missing = await makeStorePath([key]); // never published: 404
    expect(
      (await nw.app.inject({ method: 'GET', url: `/${stored.hash}.narinfo` })).statusCode,
    ).toBe(200);
    expect(
      (await nw.app.inject({ method: 'GET', url: `/${missing.hash}.narinfo` })).statusCode,
    ).toBe(404);
    const clientLookup = nw.app.inject({ method: 'GET', url: `/${slow.hash}.narinfo` });
    await eventually(() => narinfoGets(upstream, slow) === 1, 5000, 'client lookup sent');
    const top = await publishPath(upstream, [stored, missing, slow]);
    expect((await nw.app.inject({ method: 'GET', url: `/${top.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    expect((await clientLookup).statusCode).toBe(200);
    await prefetchIdle(nw);
    expect(narinfoGets(upstream, stored)).toBe(1);
    expect(narinfoGets(upstream, slow)).toBe(1);
    expect(upstream.count('GET', `/${missing.hash}.narinfo`)).toBe(1);
  });

  it('never stores a reference whose narinfo is not validly signed', async () => {
    const forged = await publishPath(upstream, [], { signedBy: untrusted });
    const good = await publishPath(upstream);
    const top = await publishPath(upstream, [forged, good]);
    expect((await nw.app.inject({ method: 'GET', url: `/${top.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    await eventually(() => narInfoStored(nw, good.hash), 10_000, 'good reference stored');
    await prefetchIdle(nw);
    expect(narinfoGets(upstream, forged)).toBe(1); // it was asked for…
    expect(narInfoStored(nw, forged.hash)).toBe(false); // …and refused
    expect(
      (await nw.app.inject({ method: 'GET', url: `/${forged.hash}.narinfo` })).statusCode,
    ).toBe(404);
  });

  it('a client asking for a queued reference is answered at once, not after the queue', async () => {
    // 16 prefetches at a time (the default), each lookup taking 300 ms: 14 wait in the queue.
    const leaves = await publishLeaves(upstream, 30, { delayMs: 300 });
    const last = leaves[leaves.length - 1];
    upstream.setNarInfo(last.hash, last.narInfo); // no delay for the one the client asks
    const top = await publishPath(upstream, leaves);
    const prefetch = nw.app.get(PrefetchService);
    expect((await nw.app.inject({ method: 'GET', url: `/${top.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    await eventually(() => prefetch.state.queued > 0, 5000, 'references queued');
    expect((await nw.app.inject({ method: 'GET', url: `/${last.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    // Answered while most of the queue still waited (the first leaves are not fetched yet).
    expect(leaves.filter((f) => narinfoGets(upstream, f) === 0).length).toBeGreaterThan(0);
    await prefetchIdle(nw);
    expect(leaves.map((f) => narinfoGets(upstream, f))).toEqual(Array(30).fill(1));
  });
});

describe('prefetch bounds', () => {
  it.each([
    { concurrency: '2', perUpstream: '8', bound: 2 },
    { concurrency: '8', perUpstream: '3', bound: 3 },
  ])(
    'with --cache-prefetch-concurrency $concurrency and --cache-prefetch-per-upstream $perUpstream the upstream sees at most $bound prefetches at once',
    async ({ concurrency, perUpstream, bound }) => {
      const upstream = await FakeUpstream.start();
      const nw = await startNarwhal(
        settings(upstream, {
          'cache-prefetch-nars': 'false',
          'cache-prefetch-concurrency': concurrency,
          'cache-prefetch-per-upstream': perUpstream,
        }),
      );
      try {
        const leaves = await publishLeaves(upstream, 24, { delayMs: 60 });
        const top = await publishPath(upstream, leaves);
        expect(
          (await nw.app.inject({ method: 'GET', url: `/${top.hash}.narinfo` })).statusCode,
        ).toBe(200);
        upstream.peakConcurrency = 0;
        await eventually(
          () => leaves.every((f) => narInfoStored(nw, f.hash)),
          20_000,
          'references stored',
        );
        expect(upstream.peakConcurrency).toBeGreaterThan(1); // it did run in parallel
        expect(upstream.peakConcurrency).toBeLessThanOrEqual(bound);
      } finally {
        await nw.close();
        await upstream.close();
      }
    },
  );
});

describe('NAR prefetch', () => {
  const upstream = new FakeUpstream();
  const nw = useNarwhal([upstream], () => settings(upstream));

  it('downloads the NAR of a narinfo a client asked for, and only of those', async () => {
    const [a, b] = await publishLeaves(upstream, 2);
    const top = await publishPath(upstream, [a, b]);
    expect((await nw.app.inject({ method: 'GET', url: `/${top.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    await waitStored(nw, top.narName, top.file);
    await eventually(() => narInfoStored(nw, a.hash) && narInfoStored(nw, b.hash), 10_000);
    await prefetchIdle(nw);
    // The references' narinfos were prefetched, their NARs not: no client asked for them.
    expect(upstream.count('GET', `/nar/${a.narName}`)).toBe(0);
    expect(upstream.count('GET', `/nar/${b.narName}`)).toBe(0);
    expect(storedSize(nw, a.narName)).toBeNull();

    // The client's GET of the NAR is served from storage: one upstream GET in all.
    const nar = await nw.app.inject({ method: 'GET', url: `/nar/${top.narName}` });
    expect(nar.statusCode).toBe(200);
    expect(nar.rawPayload.equals(top.file)).toBe(true);
    expect(upstream.count('GET', `/nar/${top.narName}`)).toBe(1);

    // A client asking for a's narinfo (a hit now) brings a's NAR.
    expect((await nw.app.inject({ method: 'HEAD', url: `/${a.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    await waitStored(nw, a.narName, a.file);
    expect(upstream.count('GET', `/nar/${a.narName}`)).toBe(1);
    expect(upstream.count('GET', `/nar/${b.narName}`)).toBe(0);
  });

  it('a client GET of a NAR being prefetched joins the download (one upstream GET)', async () => {
    const f = await makeStorePath([key], { size: 512 * 1024, compression: 'none' });
    upstream.publish(f);
    upstream.set(`/nar/${f.narName}`, { kind: 'serve', body: f.file, chunkDelayMs: 20 });
    expect((await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    await eventually(() => upstream.count('GET', `/nar/${f.narName}`) === 1, 5000, 'NAR started');
    const nar = await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(nar.statusCode).toBe(200);
    expect(nar.rawPayload.equals(f.file)).toBe(true);
    expect(upstream.count('GET', `/nar/${f.narName}`)).toBe(1);
  });

  it('does not download a NAR that is stored already', async () => {
    const f = await publishPath(upstream);
    expect((await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` })).statusCode).toBe(200);
    await waitStored(nw, f.narName, f.file);
    expect((await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    await prefetchIdle(nw);
    expect(upstream.count('GET', `/nar/${f.narName}`)).toBe(1);
  });
});

describe('prefetch at shutdown', () => {
  const upstream = new FakeUpstream();
  beforeAll(() => upstream.listen());
  afterAll(() => upstream.close());

  it('closing the application while prefetches wait and run: they stop, nothing is logged or fetched after', async () => {
    const rejections: unknown[] = [];
    const onRejection = (e: unknown) => rejections.push(e);
    process.on('unhandledRejection', onRejection);
    const nw = await startNarwhal(
      settings(upstream, { 'cache-prefetch-concurrency': '2', 'log-level': 'debug' }),
      { captureLogs: true },
    );
    try {
      const leaves = await publishLeaves(upstream, 20, { delayMs: 200 });
      const top = await publishPath(upstream, leaves);
      // top's NAR (prefetched once its narinfo is asked for) is still downloading at close.
      upstream.set(`/nar/${top.narName}`, { kind: 'serve', body: top.file, chunkDelayMs: 5000 });
      expect((await nw.app.inject({ method: 'GET', url: `/${top.hash}.narinfo` })).statusCode).toBe(
        200,
      );
      const prefetch = nw.app.get(PrefetchService);
      await eventually(
        () =>
          prefetch.state.running > 0 &&
          prefetch.state.queued > 0 &&
          upstream.count('GET', `/nar/${top.narName}`) === 1,
        5000,
        'prefetch running with more queued, and the NAR downloading',
      );
      await nw.close();
      const closedAt = Date.now();
      const linesAtClose = nw.lines.length;
      const requestsAtClose = upstream.requests.length;
      await new Promise((done) => setTimeout(done, 600));
      expect(nw.lines.slice(linesAtClose)).toEqual([]);
      expect(upstream.requests.slice(requestsAtClose).filter((r) => r.at > closedAt)).toEqual([]);
      expect(nw.lines.filter((l) => Number(l.level) >= 50)).toEqual([]);
      // Every prefetch ended when asked to (none was still running when the wait ran out).
      expect(nw.lines.filter((l) => l.context === 'prefetch' && Number(l.level) >= 40)).toEqual([]);
      // Most of the closure was never fetched: the queue was dropped.
      expect(leaves.filter((f) => narinfoGets(upstream, f) === 0).length).toBeGreaterThan(0);
      expect(rejections).toEqual([]);
    } finally {
      process.off('unhandledRejection', onRejection);
      await nw.close();
    }
  });
});

describe('prefetch at shutdown, NAR just started', () => {
  const upstream = new FakeUpstream();
  beforeAll(() => upstream.listen());
  afterAll(() => upstream.close());

  it('closing the application while prefetched NAR downloads start raises no uncaught exception', async () => {
    const errors = await uncaughtDuring(async () => {
      for (let round = 0; round < 5; round++) {
        const nw = await startNarwhal(settings(upstream));
        try {
          const paths = await publishLeaves(upstream, 8);
          await Promise.all(
            paths.map((f) => nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` })),
          );
          // Close as the NAR downloads are being opened.
          await eventually(() => upstream.narGets() > round * 8, 5000, 'a NAR download started');
        } finally {
          await nw.close();
        }
      }
    });
    expect(errors).toEqual([]);
  });
});
