import { describe, expect, it } from 'vitest';
import { FakeUpstream } from '../support/fake-upstream';
import { useNarwhal } from '../support/narwhal-app';
import { makeKey } from '../support/signing-keys';
import { makeStorePath } from '../support/store-paths';

/**
 * An upstream URL with credentials and a query string: both go with every request to that upstream,
 * and the credentials to no other host.
 */

describe('upstream credentials and query string', () => {
  const key = makeKey('up-1');
  const up = new FakeUpstream();
  /** Not one of narwhal's upstreams: a host an absolute NAR URL names. */
  const other = new FakeUpstream();
  const nw = useNarwhal([up, other], () => ({
    'cache-upstream-url': [
      `${up.url.replace('http://', 'http://alice:s3cret@')}/?token=abc&priority=5`,
    ],
    'cache-upstream-public-key': [key.publicText],
  }));
  const basic = `Basic ${Buffer.from('alice:s3cret').toString('base64')}`;

  it("sends the upstream's basic auth and query string with narinfo and NAR requests", async () => {
    const f = await makeStorePath([key]);
    up.publish(f);
    expect((await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    const nar = await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(nar.statusCode).toBe(200);
    expect(nar.rawPayload.equals(f.file)).toBe(true);
    const seen = up.requests.filter((r) => r.url.includes(f.hash) || r.url.includes(f.narName));
    expect(seen).toEqual([
      { method: 'GET', url: `/${f.hash}.narinfo?token=abc`, authorization: basic },
      { method: 'GET', url: `/nar/${f.narName}?token=abc`, authorization: basic },
    ]);
  });

  it('does not send the credentials to another host named by an absolute NAR URL', async () => {
    const f = await makeStorePath([key], { url: `${other.url}/blobs/cred-test.nar.xz` });
    up.setNarInfo(f.hash, f.narInfo);
    other.set('/blobs/cred-test.nar.xz', { kind: 'serve', body: f.file });
    expect((await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    const nar = await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(nar.statusCode).toBe(200);
    expect(other.requests).toEqual([
      { method: 'GET', url: '/blobs/cred-test.nar.xz', authorization: undefined },
    ]);
  });
});
