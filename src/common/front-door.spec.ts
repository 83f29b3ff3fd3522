import { createServer, get, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { FrontDoor, type HotAnswer } from './front-door';

/** A node:http server with `door` in front and a fallback that says it answered. */
async function serve(door: FrontDoor): Promise<{ server: Server; base: string }> {
  const server = createServer((req, res) => {
    if (door.answer(req, res)) return;
    res.writeHead(299, { 'content-type': 'text/plain' }).end('fallback');
  });
  door.attach(server);
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  return { server, base: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

interface Got {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

function fetchRaw(url: string, headers: Record<string, string> = {}, method = 'GET') {
  return new Promise<Got>((resolve, reject) => {
    const req = get(url, { headers, method, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks).toString(),
        }),
      );
    });
    req.on('error', reject);
  });
}

const HOT = Buffer.from('StorePath: /nix/store/x\n');
const hotRoute = (body: Buffer = HOT) => ({
  route: '/:file',
  answer: (url: string): HotAnswer | undefined =>
    url === '/hot.narinfo' ? { body, headers: ['content-type', 'text/x-nix-narinfo'] } : undefined,
});

let server: Server | undefined;
afterEach(async () => {
  server?.closeAllConnections();
  await new Promise((done) => server?.close(done));
  server = undefined;
});

describe('FrontDoor', () => {
  it('answers a hot GET itself, with the id, length and route headers, and reports it', async () => {
    const door = new FrontDoor(false, () => 'req-1');
    const accessLine = vi.fn();
    const response = vi.fn();
    door.observe({ accessLine });
    door.observe({ response });
    door.addRoute(hotRoute());
    let base;
    ({ server, base } = await serve(door));

    const hit = await fetchRaw(`${base}/hot.narinfo`);
    expect(hit.status).toBe(200);
    expect(hit.body).toBe(HOT.toString());
    expect(hit.headers['content-type']).toBe('text/x-nix-narinfo');
    expect(hit.headers['content-length']).toBe(String(HOT.length));
    expect(hit.headers['x-request-id']).toBe('req-1');
    await vi.waitFor(() => expect(accessLine).toHaveBeenCalledTimes(1));
    expect(accessLine).toHaveBeenCalledWith('req-1', '/hot.narinfo', expect.any(Number), true);
    expect(response).toHaveBeenCalledWith('/:file', 'GET', 200, expect.any(Number));
  });

  it('leaves to Fastify what is not a plain GET of a hot URL', async () => {
    const door = new FrontDoor(false, () => 'id');
    const answer = vi.fn(hotRoute().answer);
    door.addRoute({ route: '/:file', answer });
    let base;
    ({ server, base } = await serve(door));

    expect((await fetchRaw(`${base}/cold.narinfo`)).status).toBe(299);
    expect((await fetchRaw(`${base}/hot.narinfo`, {}, 'HEAD')).status).toBe(299);
    expect((await fetchRaw(`${base}/hot.narinfo`, { range: 'bytes=0-3' })).status).toBe(299);
    // HEAD and ranges are not even looked up (a lookup that answers counts a hit).
    expect(answer).toHaveBeenCalledTimes(1);
  });

  it('with read tokens required, answers only what the installed check admits', async () => {
    const door = new FrontDoor(true, () => 'id');
    door.addRoute(hotRoute());
    let base;
    ({ server, base } = await serve(door));
    // No check installed yet: nothing is answered by the door.
    expect((await fetchRaw(`${base}/hot.narinfo`, { authorization: 'Bearer a' })).status).toBe(299);

    const admit = vi.fn((authorization: string | undefined) => authorization === 'Bearer good');
    door.checkReads(admit);
    expect((await fetchRaw(`${base}/hot.narinfo`)).status).toBe(299);
    expect((await fetchRaw(`${base}/hot.narinfo`, { authorization: 'Bearer bad' })).status).toBe(
      299,
    );
    expect((await fetchRaw(`${base}/hot.narinfo`, { authorization: 'Bearer good' })).status).toBe(
      200,
    );
    expect(admit.mock.calls.map((c) => c[0])).toEqual([undefined, 'Bearer bad', 'Bearer good']);
  });

  it('once closing, leaves every request to Fastify (which answers 503)', async () => {
    const door = new FrontDoor(false, () => 'id');
    door.addRoute(hotRoute());
    let base;
    ({ server, base } = await serve(door));
    expect((await fetchRaw(`${base}/hot.narinfo`)).status).toBe(200);
    door.close();
    expect((await fetchRaw(`${base}/hot.narinfo`)).status).toBe(299);
  });
});
