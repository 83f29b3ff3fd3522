import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeUpstream } from '../support/fake-upstream';
import { readOrNull } from '../support/files';
import { httpGet } from '../support/http-client';
import { objectPath, spoolsRemoved, startNarwhal, type Narwhal } from '../support/narwhal-app';
import { closedPortUrl } from '../support/ports';
import { makeKey, type TestKey } from '../support/signing-keys';
import { makeStorePath, randomHashPart } from '../support/store-paths';

/**
 * Upstreams that cannot answer — a closed port, a 500, one that never answers, one that stalls in
 * the middle of a NAR — are misses: the next upstream is asked, and no client ever gets a 5xx.
 */

describe('upstream failures are misses, never 5xx', () => {
  let key: TestKey;
  let dead: string;
  let failing: FakeUpstream;
  let hanging: FakeUpstream;
  let good: FakeUpstream;
  let nw: Narwhal;
  let allBad: Narwhal;

  beforeAll(async () => {
    key = makeKey('up-1');
    dead = await closedPortUrl();
    failing = await FakeUpstream.start();
    failing.fallback = { kind: 'status', status: 500 };
    hanging = await FakeUpstream.start();
    hanging.fallback = { kind: 'hang' };
    good = await FakeUpstream.start();
    const timeouts = {
      'cache-upstream-public-key': [key.publicText],
      'cache-upstream-dialer-timeout': '500ms',
      'cache-upstream-response-header-timeout': '400ms',
      'cache-upstream-body-timeout': '2s',
    };
    nw = await startNarwhal({
      'cache-upstream-url': [dead, failing.url, hanging.url, good.url],
      ...timeouts,
    });
    allBad = await startNarwhal({
      'cache-upstream-url': [failing.url, hanging.url, dead],
      ...timeouts,
    });
  });

  afterAll(async () => {
    for (const u of [failing, hanging, good]) await u?.close();
    await nw?.close();
    await allBad?.close();
  });

  it('closed port, 500 and a timeout are skipped in order; the next upstream answers', async () => {
    const f = await makeStorePath([key]);
    good.publish(f);
    const started = Date.now();
    const res = await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` });
    expect(res.statusCode).toBe(200);
    expect(failing.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    expect(hanging.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    expect(good.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    expect(Date.now() - started).toBeLessThan(5000);
    const nar = await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(nar.statusCode).toBe(200);
    expect(nar.rawPayload.equals(f.file)).toBe(true);
  });

  it('a hash the working upstream lacks is a 404', async () => {
    const res = await nw.app.inject({ method: 'GET', url: `/${randomHashPart()}.narinfo` });
    expect(res.statusCode).toBe(404);
  });

  it('when every upstream fails, narinfo GET and HEAD are 404', async () => {
    const hash = randomHashPart();
    const res = await allBad.app.inject({ method: 'GET', url: `/${hash}.narinfo` });
    expect(res.statusCode).toBe(404);
    expect(failing.count('GET', `/${hash}.narinfo`)).toBe(1);
    expect(hanging.count('GET', `/${hash}.narinfo`)).toBe(1);
    expect((await allBad.app.inject({ method: 'HEAD', url: `/${hash}.narinfo` })).statusCode).toBe(
      404,
    );
  });

  it('when every upstream fails, a NAR without a narinfo is a 404, and /readyz stays 200', async () => {
    const f = await makeStorePath([key]);
    const res = await allBad.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(res.statusCode).toBe(404);
    expect((await allBad.app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200);
  });

  it('a NAR upstream that stalls mid-body (body timeout): no clean 200, nothing stored', async () => {
    const f = await makeStorePath([key], { size: 300_000 });
    good.publish(f);
    good.set(`/nar/${f.narName}`, { kind: 'stall', body: f.file });
    expect((await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    await nw.listen();
    const res = await httpGet(`${nw.url}/nar/${f.narName}`);
    expect({ cleanOk: res.status === 200 && res.complete }).toEqual({ cleanOk: false });
    await spoolsRemoved(nw);
    expect(await readOrNull(objectPath(nw, f.narName))).toBeNull();
  });

  it('a NAR whose upstream answers 500 after its narinfo was served is not a 5xx', async () => {
    const f = await makeStorePath([key]);
    good.publish(f);
    expect((await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    good.set(`/nar/${f.narName}`, { kind: 'status', status: 500 });
    const res = await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(res.statusCode).toBeLessThan(500);
    expect(res.statusCode).not.toBe(200);
  });
});
