import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FakeUpstream, type LoggedRequest } from '../support/fake-upstream';
import { useNarwhal } from '../support/narwhal-app';
import { makeKey } from '../support/signing-keys';
import { makeStorePath } from '../support/store-paths';

/**
 * An upstream URL with credentials and a query string: both go with every request to that upstream,
 * and the credentials to no other host.
 */

function withoutTime({ at: _at, ...rest }: LoggedRequest): Omit<LoggedRequest, 'at'> {
  return rest;
}

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
    const seen = up.requests
      .filter((r) => r.url.includes(f.hash) || r.url.includes(f.narName))
      .map(withoutTime);
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
    expect(other.requests.map(withoutTime)).toEqual([
      { method: 'GET', url: '/blobs/cred-test.nar.xz', authorization: undefined },
    ]);
  });
});

describe('--netrc-file: credentials for the host they are for, and no other', () => {
  const key = makeKey('up-1');
  // Two hosts as far as HTTP is concerned: 127.0.0.1 (in the netrc file) and 127.0.0.2 (not).
  const privateUp = new FakeUpstream({ host: '127.0.0.1' });
  const publicUp = new FakeUpstream({ host: '127.0.0.2' });
  const netrc = join(tmpdir(), `narwhal-netrc-${process.pid}-${Date.now()}`);
  // Written before narwhal starts (hooks run in the order they are registered).
  beforeAll(() => writeFile(netrc, 'machine 127.0.0.1\n  login carol\n  password n3trc-pass\n'));
  afterAll(() => rm(netrc, { force: true }));
  const nw = useNarwhal([privateUp, publicUp], () => ({
    'cache-upstream-url': [`${privateUp.url}?priority=10`, `${publicUp.url}?priority=20`],
    'cache-upstream-public-key': [key.publicText],
    'netrc-file': netrc,
  }));
  const basic = `Basic ${Buffer.from('carol:n3trc-pass').toString('base64')}`;

  it('sends them to the upstream on that host, never to the other upstream', async () => {
    const f = await makeStorePath([key]);
    publicUp.publish(f);
    const res = await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` });
    expect(res.statusCode).toBe(200);
    expect((await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` })).statusCode).toBe(200);
    const mine = privateUp.requests.filter((r) => r.url.includes(f.hash));
    expect(mine.map((r) => r.authorization)).toEqual([basic]);
    const theirs = publicUp.requests.filter(
      (r) => r.url.includes(f.hash) || r.url.includes(f.narName),
    );
    expect(theirs.length).toBe(2);
    expect(theirs.map((r) => r.authorization)).toEqual([undefined, undefined]);
  });

  it('does not follow a redirect to another host with them', async () => {
    const f = await makeStorePath([key]);
    privateUp.publish(f);
    privateUp.set(`/nar/${f.narName}`, {
      kind: 'redirect',
      location: `${publicUp.url}/cdn/${f.narName}`,
    });
    publicUp.set(`/cdn/${f.narName}`, { kind: 'serve', body: f.file });
    expect((await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    const nar = await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(nar.statusCode).toBe(200);
    expect(nar.rawPayload.equals(f.file)).toBe(true);
    expect(privateUp.requests.find((r) => r.url === `/nar/${f.narName}`)?.authorization).toBe(
      basic,
    );
    const landed = publicUp.requests.filter((r) => r.url === `/cdn/${f.narName}`);
    expect(landed).toHaveLength(1);
    expect(landed[0].authorization).toBeUndefined();
  });
});
