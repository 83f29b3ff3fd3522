import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { UpstreamReachability } from '../../src/upstream/upstream-probe';
import { FakeUpstream } from '../support/fake-upstream';
import { parseMetrics, valueOf } from '../support/metrics';
import { startNarwhal, type Narwhal } from '../support/narwhal-app';
import { closedPortUrl } from '../support/ports';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, randomHashPart } from '../support/store-paths';

/**
 * Misses made cheap against real local upstreams: the negative cache (`--cache-negative-ttl`), and
 * the circuit breaker that skips an upstream that keeps failing (`--cache-upstream-breaker-*`,
 * Retry-After), shown in /readyz and /metrics.
 */

const key = makeKey('up-1');

async function metrics(nw: Narwhal) {
  return parseMetrics((await nw.app.inject({ method: 'GET', url: '/metrics' })).body);
}

async function upstreamDetails(nw: Narwhal): Promise<UpstreamReachability[]> {
  const res = await nw.app.inject({ method: 'GET', url: '/readyz' });
  const body = JSON.parse(res.body) as {
    details: { upstream: { upstreams: UpstreamReachability[] } };
  };
  return body.details.upstream.upstreams;
}

function narinfo(nw: Narwhal, hash: string) {
  return nw.app.inject({ method: 'GET', url: `/${hash}.narinfo` });
}

describe('negative cache (--cache-negative-ttl)', () => {
  const a = new FakeUpstream();
  const b = new FakeUpstream();
  let nw: Narwhal;
  let off: Narwhal;

  beforeAll(async () => {
    await a.listen();
    await b.listen();
    const settings = {
      'cache-upstream-url': [a.url, b.url],
      'cache-upstream-public-key': [key.publicText],
      'prometheus-enabled': 'true',
    };
    nw = await startNarwhal({ ...settings, 'cache-negative-ttl': '400ms' });
    off = await startNarwhal({ ...settings, 'cache-negative-ttl': '0' });
  });

  afterAll(async () => {
    await nw?.close();
    await off?.close();
    await a.close();
    await b.close();
  });

  it('50 repeated misses of one hash ask each upstream once within the TTL, then again after it', async () => {
    const hash = randomHashPart();
    for (let i = 0; i < 50; i++) expect((await narinfo(nw, hash)).statusCode).toBe(404);
    expect(a.count('GET', `/${hash}.narinfo`)).toBe(1);
    expect(b.count('GET', `/${hash}.narinfo`)).toBe(1);
    const m = await metrics(nw);
    expect(valueOf(m, 'narwhal_narinfo_negative_cache_hits_total')).toBe(49);
    expect(valueOf(m, 'narwhal_narinfo_negative_cache_entries')).toBeGreaterThanOrEqual(1);
    await sleep(450);
    expect((await narinfo(nw, hash)).statusCode).toBe(404);
    expect(a.count('GET', `/${hash}.narinfo`)).toBe(2);
  });

  it('a transient failure (500, timeout) is not remembered as a miss', async () => {
    const hash = randomHashPart();
    a.set(`/${hash}.narinfo`, { kind: 'status', status: 500 });
    expect((await narinfo(nw, hash)).statusCode).toBe(404);
    expect((await narinfo(nw, hash)).statusCode).toBe(404);
    expect(a.count('GET', `/${hash}.narinfo`)).toBe(2);
    expect(b.count('GET', `/${hash}.narinfo`)).toBe(2);
  });

  it('an answer without a trusted signature counts as "not here" and is remembered', async () => {
    const f = await makeStorePath([makeKey('evil-1')]);
    a.publish(f);
    expect((await narinfo(nw, f.hash)).statusCode).toBe(404);
    expect((await narinfo(nw, f.hash)).statusCode).toBe(404);
    expect(a.count('GET', `/${f.hash}.narinfo`)).toBe(1);
  });

  it('a path that appears upstream is found once the entry expires', async () => {
    const f = await makeStorePath([key]);
    expect((await narinfo(nw, f.hash)).statusCode).toBe(404);
    b.publish(f);
    expect((await narinfo(nw, f.hash)).statusCode).toBe(404);
    await sleep(450);
    expect((await narinfo(nw, f.hash)).statusCode).toBe(200);
    // Found: later requests are hits, never 404s from the negative cache.
    expect((await narinfo(nw, f.hash)).statusCode).toBe(200);
    expect(b.count('GET', `/${f.hash}.narinfo`)).toBe(2);
  });

  it('with 0 every miss asks the upstreams', async () => {
    const hash = randomHashPart();
    for (let i = 0; i < 3; i++) expect((await narinfo(off, hash)).statusCode).toBe(404);
    expect(a.count('GET', `/${hash}.narinfo`)).toBe(3);
    expect(valueOf(await metrics(off), 'narwhal_narinfo_negative_cache_hits_total')).toBe(0);
  });
});

describe('circuit breaker: an upstream that keeps failing is skipped, then retried', () => {
  const failing = new FakeUpstream();
  const good = new FakeUpstream();
  const limited = new FakeUpstream();
  let dead: string;
  let nw: Narwhal;

  beforeAll(async () => {
    for (const u of [failing, good, limited]) await u.listen();
    failing.fallback = { kind: 'status', status: 500 };
    dead = await closedPortUrl();
    nw = await startNarwhal({
      'cache-upstream-url': [`${failing.url}?priority=1`, dead, limited.url, good.url],
      'cache-upstream-public-key': [key.publicText],
      'prometheus-enabled': 'true',
      'cache-negative-ttl': '0',
      'cache-upstream-breaker-failures': '3',
      'cache-upstream-breaker-backoff': '500ms',
      'cache-upstream-breaker-max-backoff': '1s',
    });
  });

  afterAll(async () => {
    await nw?.close();
    for (const u of [failing, good, limited]) await u.close();
  });

  it('after 3 failures in a row (500s, refused connections) an upstream is skipped; hits still come from the others', async () => {
    for (let i = 0; i < 3; i++) expect((await narinfo(nw, randomHashPart())).statusCode).toBe(404);
    const asked = failing.requests.length;
    expect(asked).toBe(3);
    const f = await makeStorePath([key]);
    good.publish(f);
    expect((await narinfo(nw, f.hash)).statusCode).toBe(200);
    expect((await narinfo(nw, randomHashPart())).statusCode).toBe(404);
    expect(failing.requests.length).toBe(asked); // skipped, not asked
    const details = await upstreamDetails(nw);
    expect(details.map((d) => d.circuit)).toEqual(['open', 'open', 'closed', 'closed']);
    expect(details[0].consecutiveFailures).toBe(3);
    expect(Date.parse(details[0].retryAt!)).toBeGreaterThan(Date.now());
    const m = await metrics(nw);
    expect(valueOf(m, 'narwhal_upstream_skipped_total', { upstream: failing.url })).toBe(2);
    expect(valueOf(m, 'narwhal_upstream_skipped_total', { upstream: dead })).toBe(2);
    expect(valueOf(m, 'narwhal_upstream_skipped_total', { upstream: good.url })).toBe(0);
    expect(valueOf(m, 'narwhal_upstream_circuit_state', { upstream: failing.url })).toBe(2);
    expect(valueOf(m, 'narwhal_upstream_circuit_state', { upstream: good.url })).toBe(0);
  });

  it('after the back-off one trial request goes; a failure doubles the back-off, a success closes the circuit', async () => {
    await sleep(550);
    expect((await upstreamDetails(nw))[0].circuit).toBe('half-open');
    const before = failing.requests.length;
    expect((await narinfo(nw, randomHashPart())).statusCode).toBe(404);
    expect(failing.requests.length).toBe(before + 1); // the trial, which fails
    const reopened = (await upstreamDetails(nw))[0];
    expect(reopened.circuit).toBe('open');
    expect(Date.parse(reopened.retryAt!) - Date.now()).toBeGreaterThan(550); // 1 s now
    failing.fallback = null; // it recovers: 404s from now on
    await sleep(1050);
    expect((await narinfo(nw, randomHashPart())).statusCode).toBe(404);
    expect(failing.requests.length).toBe(before + 2);
    expect((await upstreamDetails(nw))[0]).toMatchObject({
      circuit: 'closed',
      consecutiveFailures: 0,
    });
    expect((await narinfo(nw, randomHashPart())).statusCode).toBe(404);
    expect(failing.requests.length).toBe(before + 3);
  });

  it('429 with Retry-After opens the circuit at once for that long', async () => {
    limited.fallback = { kind: 'status', status: 429, headers: { 'retry-after': '1' } };
    expect((await narinfo(nw, randomHashPart())).statusCode).toBe(404);
    const asked = limited.requests.length;
    const state = (await upstreamDetails(nw))[2];
    expect(state.circuit).toBe('open');
    expect(Date.parse(state.retryAt!) - Date.now()).toBeGreaterThan(500);
    expect((await narinfo(nw, randomHashPart())).statusCode).toBe(404);
    expect(limited.requests.length).toBe(asked);
    limited.fallback = null;
  });
});
