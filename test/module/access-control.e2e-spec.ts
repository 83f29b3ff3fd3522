import { beforeAll, describe, expect, it } from 'vitest';
import { LruService } from '../../src/lru/lru.service';
import { FakeUpstream } from '../support/fake-upstream';
import { getOverSocket } from '../support/http-client';
import { dbCounts, useNarwhal, waitStored, type Narwhal } from '../support/narwhal-app';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, type StorePathFixture } from '../support/store-paths';
import { basic, bearer, makeToken } from '../support/tokens';

/**
 * Who may do what: with --cache-require-read-token every read needs a token (and a refused read
 * never reaches an upstream); the health checks, the public key and the status page's files stay
 * open; /metrics has its own setting; pins need the `pin` permission and keep their closure from the
 * LRU job.
 */

const key = makeKey('up-1');
type Headers = Record<string, string>;

function get(nw: Narwhal, url: string, headers: Headers = {}, method: 'GET' | 'HEAD' = 'GET') {
  return nw.app.inject({ method, url, headers });
}

/** top → mid → leaf, and top → leaf, published upstream. */
async function closure(upstream: FakeUpstream): Promise<StorePathFixture[]> {
  const leaf = await makeStorePath([key], { name: 'leaf' });
  const mid = await makeStorePath([key], {
    name: 'mid',
    references: [leaf.storePath.slice('/nix/store/'.length)],
  });
  const top = await makeStorePath([key], {
    name: 'top',
    references: [mid, leaf].map((f) => f.storePath.slice('/nix/store/'.length)),
  });
  for (const f of [leaf, mid, top]) upstream.publish(f);
  return [top, mid, leaf];
}

describe('with --cache-require-read-token', () => {
  const upstream = new FakeUpstream();
  const nw = useNarwhal([upstream], () => ({
    'cache-upstream-url': [upstream.url],
    'cache-upstream-public-key': [key.publicText],
    'cache-require-read-token': 'true',
    'prometheus-enabled': 'true',
    'prometheus-require-token': 'true',
    'cache-max-size': '1T',
  }));
  const auth: Record<string, Headers> = {};
  let f: StorePathFixture;

  beforeAll(async () => {
    auth.reader = basic(await makeToken(nw, 'fleet', ['read']));
    auth.writer = basic(await makeToken(nw, 'ci', ['write']));
    auth.metrics = bearer(await makeToken(nw, 'prometheus', ['metrics']));
    auth.pinner = basic(await makeToken(nw, 'release', ['read', 'pin']));
    f = await makeStorePath([key], { name: 'private' });
    upstream.publish(f);
  });

  it('anonymous reads get 401 with a Basic challenge and cause no upstream request', async () => {
    const drv = `${f.hash}-private.drv`;
    for (const [method, url] of [
      ['GET', `/${f.hash}.narinfo`],
      ['HEAD', `/${f.hash}.narinfo`],
      ['GET', `/nar/${f.narName}`],
      ['HEAD', `/nar/${f.narName}`],
      ['GET', `/${f.hash}.ls`],
      ['GET', `/log/${drv}`],
      ['GET', `/realisations/sha256:${'1'.repeat(64)}!out.doi`],
      ['GET', '/nix-cache-info'],
      ['GET', '/'],
      ['GET', '/_narwhal/status'],
      ['GET', '/_narwhal/status.json'],
    ] as const) {
      const res = await get(nw, url, {}, method);
      expect({ method, url, status: res.statusCode }).toEqual({ method, url, status: 401 });
      expect(res.headers['www-authenticate']).toBe('Basic realm="narwhal"');
    }
    expect(upstream.requests).toEqual([]);
    expect(dbCounts(nw)).toEqual({ narinfos: 0, narFiles: 0, stored: 0 });
  });

  it('a token that is not valid, or one without read, is refused too', async () => {
    const bad = await get(nw, `/${f.hash}.narinfo`, basic(`nw_${'B'.repeat(43)}`));
    expect(bad.statusCode).toBe(401);
    const writeOnly = await get(nw, `/${f.hash}.narinfo`, auth.writer);
    expect(writeOnly.statusCode).toBe(403);
    expect(writeOnly.body).toContain('"ci" lacks the read permission');
    expect(upstream.requests).toEqual([]);
  });

  it('with a read token (Basic with any user name, or Bearer) the flows work as usual', async () => {
    const info = await get(nw, `/${f.hash}.narinfo`, auth.reader);
    expect(info.statusCode).toBe(200);
    const nar = await get(nw, `/nar/${f.narName}`, auth.reader);
    expect(nar.statusCode).toBe(200);
    expect(nar.rawPayload.equals(f.file)).toBe(true);
    const token = await makeToken(nw, 'other-reader', ['read']);
    expect((await get(nw, `/${f.hash}.narinfo`, bearer(token))).statusCode).toBe(200);
    expect((await get(nw, '/nix-cache-info', basic(token, 'anyone'))).statusCode).toBe(200);
  });

  it('hits answered from memory need the token too', async () => {
    // Over a real connection: the front door answers these before Fastify, which inject bypasses.
    await nw.listen();
    const real = (url: string, headers: Headers = {}) => getOverSocket(`${nw.url}${url}`, headers);
    // Served lately with a token (the test above): in memory now, and still refused without one.
    for (const url of [`/${f.hash}.narinfo`, `/nar/${f.narName}`]) {
      const hit = await real(url, auth.reader);
      expect({ url, status: hit.statusCode }).toEqual({ url, status: 200 });
      expect({ url, status: (await real(url)).statusCode }).toEqual({ url, status: 401 });
      const writeOnly = await real(url, auth.writer);
      expect({ url, status: writeOnly.statusCode }).toEqual({ url, status: 403 });
      const unknown = await real(url, bearer(`nw_${'x'.repeat(43)}`));
      expect({ url, status: unknown.statusCode }).toEqual({ url, status: 401 });
    }
  });

  it('health checks, the public key and the status page files stay open', async () => {
    for (const url of [
      '/healthz',
      '/readyz',
      '/pubkey',
      '/_narwhal/status.css',
      '/_narwhal/status.js',
    ]) {
      expect({ url, status: (await get(nw, url)).statusCode }).toEqual({ url, status: 200 });
    }
  });

  it('a browser is asked for the token and then sees the status page', async () => {
    const html = { accept: 'text/html,application/xhtml+xml;q=0.9,*/*;q=0.8' };
    const challenged = await get(nw, '/', html);
    expect(challenged.statusCode).toBe(401);
    expect(challenged.headers['www-authenticate']).toBe('Basic realm="narwhal"');
    // What a browser sends after the user typed anything as user name and the token as password.
    const page = await get(nw, '/', { ...html, ...auth.reader });
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-type']).toContain('text/html');
    const json = await get(nw, '/_narwhal/status.json', auth.reader);
    expect(json.statusCode).toBe(200);
    expect(JSON.parse(json.body)).toHaveProperty('instance');
  });

  it('/metrics needs the metrics permission with --prometheus-require-token', async () => {
    expect((await get(nw, '/metrics')).statusCode).toBe(401);
    expect((await get(nw, '/metrics', auth.reader)).statusCode).toBe(403);
    const scrape = await get(nw, '/metrics', auth.metrics);
    expect(scrape.statusCode).toBe(200);
    expect(scrape.body).toMatch(
      /narwhal_auth_refused_total\{reason="unauthorized",permission="read"\} [1-9]/,
    );
    expect(scrape.body).toMatch(
      /narwhal_auth_refused_total\{reason="forbidden",permission="metrics"\} 1/,
    );
  });

  it('the peer endpoint is no client endpoint: anonymous callers get 404, not a challenge', async () => {
    const res = await get(nw, `/_narwhal/downloads/${f.narName}`);
    expect(res.statusCode).toBe(404);
    expect(res.headers['www-authenticate']).toBeUndefined();
  });

  describe('pins', () => {
    it('need the pin permission', async () => {
      for (const [headers, status] of [
        [{}, 401],
        [auth.reader, 403],
        [auth.writer, 403],
      ] as const) {
        const res = await nw.app.inject({
          method: 'PUT',
          url: `/_narwhal/pins/${f.hash}`,
          headers,
        });
        expect(res.statusCode).toBe(status);
        expect((await get(nw, '/_narwhal/pins', headers)).statusCode).toBe(status);
      }
    });

    it("keep a path's whole closure through an LRU run that evicts everything else", async () => {
      const [top, mid, leaf] = await closure(upstream);
      const others = [await makeStorePath([key]), await makeStorePath([key])];
      for (const o of others) upstream.publish(o);
      for (const x of [top, mid, leaf, ...others]) {
        expect((await get(nw, `/${x.hash}.narinfo`, auth.reader)).statusCode).toBe(200);
        expect((await get(nw, `/nar/${x.narName}`, auth.reader)).statusCode).toBe(200);
        await waitStored(nw, x.narName, x.file);
      }
      const unknown = await nw.app.inject({
        method: 'PUT',
        url: `/_narwhal/pins/${'0'.repeat(32)}`,
        headers: auth.pinner,
      });
      expect(unknown.statusCode).toBe(404);
      const pinned = await nw.app.inject({
        method: 'PUT',
        url: `/_narwhal/pins/${top.storePath.slice('/nix/store/'.length)}`,
        headers: auth.pinner,
      });
      expect(pinned.statusCode).toBe(200);
      expect(JSON.parse(pinned.body)).toMatchObject({
        hash: top.hash,
        storePath: top.storePath,
        createdBy: 'release',
        closure: { paths: 3, storedBytes: top.file.length + mid.file.length + leaf.file.length },
      });
      const list = JSON.parse((await get(nw, '/_narwhal/pins', auth.pinner)).body) as unknown[];
      expect(list).toEqual([expect.objectContaining({ hash: top.hash })]);

      const report = await nw.app.get(LruService).run(1);

      expect(report).toMatchObject({ pinned: 3 });
      expect(report.evicted).toBeGreaterThanOrEqual(others.length);
      for (const x of [top, mid, leaf]) {
        const nar = await get(nw, `/nar/${x.narName}`, auth.reader);
        expect(nar.headers['x-narwhal-source']).toBe('storage');
      }
      expect(dbCounts(nw)).toEqual({ narinfos: 3, narFiles: 3, stored: 3 });

      const unpinned = await nw.app.inject({
        method: 'DELETE',
        url: `/_narwhal/pins/${top.hash}`,
        headers: auth.pinner,
      });
      expect(unpinned.statusCode).toBe(200);
      expect((await nw.app.get(LruService).run(1)).evicted).toBe(3);
    });
  });
});

describe('without --cache-require-read-token (the default)', () => {
  const upstream = new FakeUpstream();
  const nw = useNarwhal([upstream], () => ({
    'cache-upstream-url': [upstream.url],
    'cache-upstream-public-key': [key.publicText],
  }));

  it('reads need no token, and credentials that are not valid are ignored', async () => {
    const f = await makeStorePath([key]);
    upstream.publish(f);
    expect((await get(nw, `/${f.hash}.narinfo`)).statusCode).toBe(200);
    const stale = basic(`nw_${'C'.repeat(43)}`);
    expect((await get(nw, `/nar/${f.narName}`, stale)).statusCode).toBe(200);
  });

  it('pins still need a token', async () => {
    const res = await nw.app.inject({ method: 'PUT', url: `/_narwhal/pins/${'1'.repeat(32)}` });
    expect(res.statusCode).toBe(401);
  });
});
