import { describe, expect, it } from 'vitest';
import { FakeUpstream } from '../support/fake-upstream';
import { useNarwhal } from '../support/narwhal-app';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, sign } from '../support/store-paths';

/** The order in which upstreams are asked: by `?priority=N` on their URL, lower first. */

describe('upstream priority (?priority=N, lower first)', () => {
  const key = makeKey('up-1');
  const low = new FakeUpstream();
  const high = new FakeUpstream();
  // Given in the "wrong" order: the priority decides.
  const nw = useNarwhal([low, high], () => ({
    'cache-upstream-url': [`${low.url}?priority=50`, `${high.url}?priority=10`],
    'cache-upstream-public-key': [key.publicText],
  }));

  it('asks the lower priority number first and stops at its answer', async () => {
    const f = await makeStorePath([key]);
    high.publish(f);
    const onLow = { ...f.narInfo, url: 'nar/low-copy.nar.xz' };
    low.publish(f, sign(onLow, [key]));
    const res = await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` });
    expect(res.statusCode).toBe(200);
    expect(high.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    expect(low.count(undefined, `/${f.hash}.narinfo`)).toBe(0);
    const nar = await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(nar.statusCode).toBe(200);
    expect(high.count('GET', `/nar/${f.narName}`)).toBe(1);
    expect(low.requests.filter((r) => r.url.startsWith('/nar/'))).toHaveLength(0);
    // `priority` is narwhal's setting, not part of the upstream's URL.
    expect([...high.requests, ...low.requests].filter((r) => r.url.includes('priority'))).toEqual(
      [],
    );
  });

  it('asks the higher number only after the lower one missed', async () => {
    const f = await makeStorePath([key]);
    low.publish(f);
    const res = await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` });
    expect(res.statusCode).toBe(200);
    const order = [
      ...high.requests.map((r) => ['high', r.url]),
      ...low.requests.map((r) => ['low', r.url]),
    ].filter(([, u]) => u === `/${f.hash}.narinfo`);
    expect(order).toHaveLength(2);
    expect(high.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    expect(low.count('GET', `/${f.hash}.narinfo`)).toBe(1);
  });
});
