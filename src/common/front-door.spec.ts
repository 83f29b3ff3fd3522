import {
  createServer,
  get,
  type IncomingHttpHeaders,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { asyncContext } from './async-context';
import { NotFoundError } from './errors';
import { FrontDoor, type ErrorAnswer, type HotAnswer } from './front-door';

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
      res.on('error', reject); // cut mid-body
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

describe('FrontDoor cold routes', () => {
  /** A cold route for `/cold-<anything>.narinfo` that answers after a tick, or fails as told. */
  function coldRoute(behaviour: (method: string, url: string) => unknown = () => 'ok') {
    const served: string[] = [];
    const context: (string | undefined)[] = [];
    return {
      served,
      context,
      route: {
        route: '/:file',
        takes: (_method: 'GET' | 'HEAD', url: string) => url.startsWith('/cold-'),
        serve: async (method: 'GET' | 'HEAD', url: string, res: ServerResponse) => {
          await new Promise((r) => setImmediate(r));
          served.push(`${method} ${url}`);
          context.push(asyncContext.getStore()?.reqId);
          const result = behaviour(method, url);
          if (result instanceof Error) throw result;
          if (result === 'break') {
            res.writeHead(200, ['content-length', '100']);
            res.write('partial');
            await new Promise((r) => setImmediate(r));
            throw new Error('broke mid-body');
          }
          const body = Buffer.from(`answer to ${url}`);
          res.writeHead(200, [
            'content-type',
            'text/x-test',
            'content-length',
            String(body.length),
          ]);
          res.end(method === 'HEAD' ? undefined : body);
        },
      },
    };
  }

  const errors = (error: unknown): ErrorAnswer =>
    error instanceof NotFoundError
      ? { status: 404, headers: ['content-type', 'text/plain; charset=utf-8'], body: 'not found\n' }
      : { status: 500, headers: ['content-type', 'text/plain; charset=utf-8'], body: 'internal\n' };

  it('answers what a cold route takes, in the request context, logged and counted with its status', async () => {
    const door = new FrontDoor(false, () => 'req-7');
    const accessLine = vi.fn();
    const response = vi.fn();
    door.observe({ accessLine, response });
    const cold = coldRoute();
    door.addColdRoute(cold.route);
    door.answerErrors(errors);
    let base;
    ({ server, base } = await serve(door));

    const got = await fetchRaw(`${base}/cold-1.narinfo`);
    expect(got.status).toBe(200);
    expect(got.body).toBe('answer to /cold-1.narinfo');
    expect(got.headers['content-type']).toBe('text/x-test');
    expect(got.headers['x-request-id']).toBe('req-7');
    const head = await fetchRaw(`${base}/cold-2.narinfo`, {}, 'HEAD');
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
    expect(cold.served).toEqual(['GET /cold-1.narinfo', 'HEAD /cold-2.narinfo']);
    // The route ran in the request's context: its log lines carry the request id.
    expect(cold.context).toEqual(['req-7', 'req-7']);
    await vi.waitFor(() => expect(accessLine).toHaveBeenCalledTimes(2));
    expect(accessLine).toHaveBeenCalledWith(
      'req-7',
      '/cold-1.narinfo',
      expect.any(Number),
      true,
      'GET',
      200,
    );
    expect(response).toHaveBeenCalledWith('/:file', 'HEAD', 200, expect.any(Number));
    // What the route does not take still goes to Fastify.
    expect((await fetchRaw(`${base}/other.narinfo`)).status).toBe(299);
  });

  it("answers a cold route's error as the error answers say, with the request id", async () => {
    const door = new FrontDoor(false, () => 'req-8');
    const accessLine = vi.fn();
    const response = vi.fn();
    door.observe({ accessLine, response });
    door.addColdRoute(coldRoute(() => new NotFoundError('cold-404.narinfo not found')).route);
    door.answerErrors(errors);
    let base;
    ({ server, base } = await serve(door));

    const got = await fetchRaw(`${base}/cold-404.narinfo`);
    expect(got.status).toBe(404);
    expect(got.body).toBe('not found\n');
    expect(got.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(got.headers['content-length']).toBe('10');
    expect(got.headers['x-request-id']).toBe('req-8');
    const head = await fetchRaw(`${base}/cold-404.narinfo`, {}, 'HEAD');
    expect(head.status).toBe(404);
    expect(head.body).toBe('');
    await vi.waitFor(() => expect(response).toHaveBeenCalledTimes(2));
    expect(response).toHaveBeenCalledWith('/:file', 'GET', 404, expect.any(Number));
    expect(accessLine).toHaveBeenCalledWith(
      'req-8',
      '/cold-404.narinfo',
      expect.any(Number),
      true,
      'GET',
      404,
    );
  });

  it('cuts the connection when a cold answer fails after its head: no clean end of a short body', async () => {
    const door = new FrontDoor(false, () => 'id');
    const accessLine = vi.fn();
    door.observe({ accessLine });
    door.addColdRoute(coldRoute(() => 'break').route);
    door.answerErrors(errors);
    let base;
    ({ server, base } = await serve(door));

    await expect(fetchRaw(`${base}/cold-break.narinfo`)).rejects.toThrow();
    await vi.waitFor(() => expect(accessLine).toHaveBeenCalledTimes(1));
    expect(accessLine.mock.calls[0][3]).toBe(false); // logged as aborted
  });

  it('takes nothing without error answers, with a Range header, unadmitted, or while closing', async () => {
    const door = new FrontDoor(true, () => 'id');
    const cold = coldRoute();
    door.addColdRoute(cold.route);
    door.checkReads((authorization) => authorization === 'Bearer good');
    let base;
    ({ server, base } = await serve(door));
    const good = { authorization: 'Bearer good' };
    // No error answers installed yet: the door cannot answer a failure as Nest would.
    expect((await fetchRaw(`${base}/cold-1.narinfo`, good)).status).toBe(299);
    door.answerErrors(errors);
    expect((await fetchRaw(`${base}/cold-1.narinfo`, good)).status).toBe(200);
    expect((await fetchRaw(`${base}/cold-1.narinfo`)).status).toBe(299);
    expect((await fetchRaw(`${base}/cold-1.narinfo`, { authorization: 'Bearer bad' })).status).toBe(
      299,
    );
    expect((await fetchRaw(`${base}/cold-1.narinfo`, { ...good, range: 'bytes=0-3' })).status).toBe(
      299,
    );
    door.close();
    expect((await fetchRaw(`${base}/cold-1.narinfo`, good)).status).toBe(299);
    expect(cold.served).toEqual(['GET /cold-1.narinfo']);
  });
});
