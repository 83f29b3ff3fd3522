import { describe, expect, it } from 'vitest';
import { parseNarInfo } from '../../src/nix/narinfo';
import { FakeUpstream } from '../support/fake-upstream';
import { useNarwhal } from '../support/narwhal-app';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, sign, STORE_DIR } from '../support/store-paths';

/**
 * The order in which upstreams answer: by `?priority=N` on their URL, lower first. Hedged (the
 * default) every upstream is asked at once and the highest-priority valid answer wins; with
 * `--cache-upstream-hedge=false` the next upstream is asked only after the previous one missed.
 */

const key = makeKey('up-1');

describe('hedged lookups (the default): every upstream at once, the highest priority wins', () => {
  const low = new FakeUpstream();
  const high = new FakeUpstream();
  // Given in the "wrong" order: the priority decides.
  const nw = useNarwhal([low, high], () => ({
    'cache-upstream-url': [`${low.url}?priority=50`, `${high.url}?priority=10`],
    'cache-upstream-public-key': [key.publicText],
  }));

  it('a higher-priority hit wins over a lower-priority one, and its NAR is the one fetched', async () => {
    const f = await makeStorePath([key]);
    high.publish(f);
    const onLow = { ...f.narInfo, url: 'nar/low-copy.nar.xz' };
    low.publish(f, sign(onLow, [key]));
    const res = await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` });
    expect(res.statusCode).toBe(200);
    expect(high.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    expect(low.count(undefined, `/${f.hash}.narinfo`)).toBeLessThanOrEqual(1);
    const nar = await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(nar.statusCode).toBe(200);
    expect(high.count('GET', `/nar/${f.narName}`)).toBe(1);
    expect(low.requests.filter((r) => r.url.startsWith('/nar/'))).toHaveLength(0);
    // `priority` is narwhal's setting, not part of the upstream's URL.
    expect([...high.requests, ...low.requests].filter((r) => r.url.includes('priority'))).toEqual(
      [],
    );
  });

  it('a lower-priority hit that answers first waits for the higher-priority upstream still answering', async () => {
    const f = await makeStorePath([key]);
    high.publish(f);
    high.setNarInfo(f.hash, f.narInfo, { delayMs: 300 });
    const onLow = sign({ ...f.narInfo, url: 'nar/low-copy.nar.xz' }, [key]);
    low.setNarInfo(f.hash, onLow);
    const res = await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` });
    expect(res.statusCode).toBe(200);
    expect(high.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    expect(low.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    const nar = await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(nar.statusCode).toBe(200);
    expect(high.count('GET', `/nar/${f.narName}`)).toBe(1);
    expect(low.count(undefined, '/nar/low-copy.nar.xz')).toBe(0);
  });

  it('when the higher-priority upstream misses, the lower one answers', async () => {
    const f = await makeStorePath([key]);
    low.publish(f);
    const res = await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` });
    expect(res.statusCode).toBe(200);
    expect(high.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    expect(low.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    expect(parseNarInfo(res.body, { storeDir: STORE_DIR }).narHash).toBe(f.narInfo.narHash);
  });
});

describe('--cache-upstream-hedge=false: one upstream after another', () => {
  const low = new FakeUpstream();
  const high = new FakeUpstream();
  const nw = useNarwhal([low, high], () => ({
    'cache-upstream-url': [`${low.url}?priority=50`, `${high.url}?priority=10`],
    'cache-upstream-public-key': [key.publicText],
    'cache-upstream-hedge': 'false',
  }));

  it('asks the lower priority number first and stops at its answer', async () => {
    const f = await makeStorePath([key]);
    high.publish(f);
    low.publish(f);
    const res = await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` });
    expect(res.statusCode).toBe(200);
    expect(high.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    expect(low.count(undefined, `/${f.hash}.narinfo`)).toBe(0);
  });

  it('asks the higher number only after the lower one missed', async () => {
    const f = await makeStorePath([key]);
    // The first answer is unusable (signed by nobody trusted) and comes after 200 ms.
    high.setNarInfo(f.hash, sign({ ...f.narInfo }, [makeKey('evil-1')]), { delayMs: 200 });
    low.publish(f);
    const res = await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` });
    expect(res.statusCode).toBe(200);
    const [asked] = high.requests.filter((r) => r.url === `/${f.hash}.narinfo`);
    const [then] = low.requests.filter((r) => r.url === `/${f.hash}.narinfo`);
    expect(then.at - asked.at).toBeGreaterThanOrEqual(200);
  });
});
