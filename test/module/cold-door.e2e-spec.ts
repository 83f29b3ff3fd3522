import { request, type IncomingHttpHeaders } from 'node:http';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { FrontDoor } from '../../src/common/front-door';
import { FakeUpstream } from '../support/fake-upstream';
import { getOverSocket, httpGet } from '../support/http-client';
import { parseMetrics, valueOf } from '../support/metrics';
import { useNarwhal, waitStored } from '../support/narwhal-app';
import { makeKey } from '../support/signing-keys';
import { makeStorePath } from '../support/store-paths';

/**
 * Misses answered by the front door: a GET or HEAD of a narinfo and a GET of a NAR that are not in
 * memory are looked up (database, upstreams, a download) without Fastify and Nest, and answered the
 * way the controllers answer them — the same status, headers and body, errors included — as `inject`
 * (which goes through Fastify and the controllers) shows.
 */

const key = makeKey('up-1');
const upstream = new FakeUpstream();
const nw = useNarwhal([upstream], () => ({
  'cache-upstream-url': [upstream.url],
  'cache-upstream-public-key': [key.publicText],
  'prometheus-enabled': 'true',
}));

// Over a real connection: the front door sits at the node:http server, which inject bypasses.
beforeAll(() => nw.listen());

/** Whether the front door took each request (answered it itself) since the spy was made. */
const taken = vi.spyOn(FrontDoor.prototype, 'answer');
afterEach(() => taken.mockClear());
const takenByDoor = () => taken.mock.results.map((r) => r.value as boolean);

/** The headers both paths must agree on (not the date or the request id). */
function comparable(headers: IncomingHttpHeaders | Record<string, unknown>) {
  const keep = ['content-type', 'content-length', 'accept-ranges', 'allow', 'www-authenticate'];
  return Object.fromEntries(
    keep.filter((k) => headers[k] !== undefined).map((k) => [k, headers[k]]),
  );
}

function head(
  path: string,
): Promise<{ status: number; headers: IncomingHttpHeaders; body: number }> {
  return new Promise((resolve, reject) => {
    request(`${nw.url}${path}`, { method: 'HEAD', agent: false }, (res) => {
      let body = 0;
      res.on('data', (c: Buffer) => (body += c.length));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    })
      .on('error', reject)
      .end();
  });
}

async function metric(name: string, labels: Record<string, string>): Promise<number> {
  const scrape = await getOverSocket(`${nw.url}/metrics`);
  return valueOf(parseMetrics(scrape.body), name, labels) ?? 0;
}

describe('misses answered by the front door', () => {
  it('a cold narinfo (GET and HEAD) is fetched and answered as the controller answers it', async () => {
    const f = await makeStorePath([key], { name: 'door-narinfo', size: 900 });
    const g = await makeStorePath([key], { name: 'door-head', size: 900 });
    upstream.publish(f);
    upstream.publish(g);

    const cold = await getOverSocket(`${nw.url}/${f.hash}.narinfo`);
    const coldHead = await head(`/${g.hash}.narinfo`);
    expect(takenByDoor()).toEqual([true, true]);
    expect(cold.statusCode).toBe(200);
    expect(cold.headers['x-request-id']).toEqual(expect.any(String));
    expect(coldHead.status).toBe(200);
    expect(coldHead.body).toBe(0);
    // The same requests through Fastify and the controller (now hits).
    const viaNest = await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` });
    const viaNestHead = await nw.app.inject({ method: 'HEAD', url: `/${g.hash}.narinfo` });
    expect(cold.body).toBe(viaNest.body);
    expect(comparable(cold.headers)).toEqual(comparable(viaNest.headers));
    expect(comparable(coldHead.headers)).toEqual(comparable(viaNestHead.headers));
    expect(upstream.count('GET', `/${f.hash}.narinfo`)).toBe(1);
  });

  it('errors are the controller’s: 400 for a bad hash, 404 for an unknown one or a failing upstream, 400 for a bad NAR name', async () => {
    const unknown = await makeStorePath([key], { name: 'door-unknown', size: 100 });
    const failing = await makeStorePath([key], { name: 'door-failing', size: 100 });
    upstream.set(`/${failing.hash}.narinfo`, { kind: 'status', status: 500 });
    const paths = [
      '/not-a-hash.narinfo',
      `/${unknown.hash}.narinfo`,
      `/${failing.hash}.narinfo`,
      '/nar/not-a-nar-name',
    ];
    const before = await metric('narwhal_http_requests_total', {
      route: '/:file',
      method: 'GET',
      status: '404',
    });
    taken.mockClear();
    const viaDoor = [];
    for (const path of paths) viaDoor.push(await getOverSocket(`${nw.url}${path}`));
    expect(takenByDoor()).toEqual([true, true, true, true]);
    expect(viaDoor.map((r) => r.statusCode)).toEqual([400, 404, 404, 400]);
    for (const [i, path] of paths.entries()) {
      const viaNest = await nw.app.inject({ method: 'GET', url: path });
      expect(viaDoor[i].statusCode, path).toBe(viaNest.statusCode);
      expect(viaDoor[i].body, path).toBe(viaNest.body);
      expect(comparable(viaDoor[i].headers), path).toEqual(comparable(viaNest.headers));
    }
    // Counted under the route's pattern with their status, as Fastify's hook counts them.
    expect(
      await metric('narwhal_http_requests_total', {
        route: '/:file',
        method: 'GET',
        status: '404',
      }),
    ).toBe(before + 4); // two through the door, two through inject
    const missingHead = await head(`/${unknown.hash}.narinfo`);
    expect(missingHead.status).toBe(404);
    expect(missingHead.body).toBe(0);
  });

  it('a cold NAR is downloaded and streamed by the front door with the controller’s headers; a Range request goes to the controller', async () => {
    const f = await makeStorePath([key], { name: 'door-nar', size: 200_000 });
    upstream.publish(f);
    expect((await getOverSocket(`${nw.url}/${f.hash}.narinfo`)).statusCode).toBe(200);
    taken.mockClear();

    const cold = await httpGet(`${nw.url}/nar/${f.narName}`, { keepBody: true });
    expect(takenByDoor()).toEqual([true]);
    expect(cold.status).toBe(200);
    expect(cold.complete).toBe(true);
    expect(cold.body.equals(f.file)).toBe(true);
    expect(cold.headers['x-narwhal-source']).toBe('download');
    await waitStored(nw, f.narName, f.file);

    const viaNest = await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(viaNest.headers['x-narwhal-source']).toBe('storage');
    expect(comparable(cold.headers)).toEqual(comparable(viaNest.headers));

    taken.mockClear();
    const part = await httpGet(`${nw.url}/nar/${f.narName}`, {
      keepBody: true,
      headers: { range: 'bytes=10-19' },
    });
    expect(takenByDoor()).toEqual([false]);
    expect(part.status).toBe(206);
    expect(part.body.equals(f.file.subarray(10, 20))).toBe(true);
  });

  it('a query string or an escaped name goes to Fastify, which routes it as before', async () => {
    const f = await makeStorePath([key], { name: 'door-query', size: 100 });
    upstream.publish(f);
    const withQuery = await getOverSocket(`${nw.url}/${f.hash}.narinfo?x=1`);
    const escaped = await getOverSocket(`${nw.url}/${f.hash}%2Enarinfo`);
    expect(takenByDoor()).toEqual([false, false]);
    expect(withQuery.statusCode).toBe(200);
    expect(escaped.statusCode).toBe(200);
    expect(escaped.body).toBe(withQuery.body);
  });
});
