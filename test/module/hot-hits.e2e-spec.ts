import { rm } from 'node:fs/promises';
import { Agent, request, type Server } from 'node:http';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { NarService } from '../../src/nar/nar.service';
import { NarInfoService } from '../../src/narinfo/narinfo.service';
import { RememberedNars } from '../../src/nar/stored-nar-memory';
import { FakeUpstream } from '../support/fake-upstream';
import { getOverSocket } from '../support/http-client';
import { objectPath, useNarwhal, waitStored, type Narwhal } from '../support/narwhal-app';
import { parseMetrics, valueOf } from '../support/metrics';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, type StorePathFixture } from '../support/store-paths';

/**
 * Hits answered from memory: a narinfo served lately and a small NAR served lately are answered
 * without the database or the disk (by the front door, before Fastify and Nest), with the same
 * headers, access line and counters as any hit; a large NAR served lately is sent from its file by
 * the fast lane; a NAR that is forgotten (deleted) is looked up again.
 */

const key = makeKey('up-1');
const upstream = new FakeUpstream();
const nw = useNarwhal([upstream], () => ({
  'cache-upstream-url': [upstream.url],
  'cache-upstream-public-key': [key.publicText],
  'prometheus-enabled': 'true',
}));

// Over a real connection: hot hits are answered at the node:http server, which inject bypasses.
beforeAll(() => nw.listen());
const get = (url: string, headers: Record<string, string> = {}) =>
  getOverSocket(`${nw.url}${url}`, headers);

async function metric(name: string, labels: Record<string, string>): Promise<number> {
  const scrape = await get('/metrics');
  return valueOf(parseMetrics(scrape.body), name, labels) ?? 0;
}

/** Fetches `f` cold, then once from storage (which is when a small NAR is kept in memory). */
async function warm(n: Narwhal, f: StorePathFixture): Promise<void> {
  expect((await get(`/${f.hash}.narinfo`)).statusCode).toBe(200);
  expect((await get(`/nar/${f.narName}`)).statusCode).toBe(200);
  await waitStored(n, f.narName, f.file);
  const stored = await get(`/nar/${f.narName}`);
  expect(stored.headers['x-narwhal-source']).toBe('storage');
}

/**
 * One keep-alive connection, as Nix uses, and a count of the requests node:http saw meanwhile
 * (none when the fast lane answered them all). `close` ends both.
 */
function laneConnection() {
  const server: Server = nw.app.getHttpServer();
  let seen = 0;
  const count = () => seen++;
  server.on('request', count);
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const sockets = new Set<unknown>();
  const ask = (path: string, method = 'GET') =>
    new Promise<{ status: number; body: Buffer; type?: string; length?: string }>(
      (resolve, reject) => {
        request(`${nw.url}${path}`, { agent, method }, (res) => {
          sockets.add(res.socket);
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () =>
            resolve({
              status: res.statusCode ?? 0,
              body: Buffer.concat(chunks),
              type: res.headers['content-type'],
              length: res.headers['content-length'],
            }),
          );
        })
          .on('error', reject)
          .end();
      },
    );
  return {
    ask,
    sockets,
    seenByNode: () => seen,
    close: () => {
      agent.destroy();
      server.removeListener('request', count);
    },
  };
}

describe('hits answered from memory', () => {
  it('a small NAR served lately is answered without its file, with the headers of any stored hit', async () => {
    const f = await makeStorePath([key], { name: 'small', size: 2048 });
    upstream.publish(f);
    await warm(nw, f);
    const fromDisk = await get(`/nar/${f.narName}`);
    const hitsBefore = await metric('narwhal_nar_requests_total', { result: 'hit' });
    const bytesBefore = await metric('narwhal_served_bytes_total', { source: 'storage' });

    // Its file gone: the bytes come from memory (they are the verified bytes stored under the name).
    await rm(objectPath(nw, f.narName));
    const flow = vi.spyOn(nw.app.get(NarService), 'get');
    const fromMemory = await get(`/nar/${f.narName}`);
    expect(fromMemory.statusCode).toBe(200);
    expect(flow).not.toHaveBeenCalled(); // answered before the controller
    expect(fromMemory.rawPayload.equals(f.file)).toBe(true);
    for (const h of ['content-type', 'content-length', 'accept-ranges', 'x-narwhal-source'])
      expect({ h, v: fromMemory.headers[h] }).toEqual({ h, v: fromDisk.headers[h] });
    expect(fromMemory.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(await metric('narwhal_nar_requests_total', { result: 'hit' })).toBe(hitsBefore + 1);
    expect(await metric('narwhal_served_bytes_total', { source: 'storage' })).toBe(
      bytesBefore + f.file.length,
    );
    expect(
      await metric('narwhal_http_requests_total', {
        route: '/nar/:name',
        method: 'GET',
        status: '200',
      }),
    ).toBeGreaterThanOrEqual(4);
    expect(await metric('narwhal_nar_memory_bytes', {})).toBeGreaterThanOrEqual(f.file.length);

    // A range of it, too (through the controller, from the same memory).
    const part = await get(`/nar/${f.narName}`, { range: 'bytes=100-199' });
    expect(part.statusCode).toBe(206);
    expect(part.rawPayload.equals(f.file.subarray(100, 200))).toBe(true);
    expect(flow).toHaveBeenCalledTimes(1);
    flow.mockRestore();
    expect(upstream.count('GET', `/nar/${f.narName}`)).toBe(1);

    // Forgotten (what a delete does on every instance): looked up again, found missing, fetched.
    await nw.app.get(RememberedNars).forgetEverywhere(f.narName);
    const again = await get(`/nar/${f.narName}`);
    expect(again.statusCode).toBe(200);
    expect(again.rawPayload.equals(f.file)).toBe(true);
    expect(again.headers['x-narwhal-source']).toBe('download');
    expect(upstream.count('GET', `/nar/${f.narName}`)).toBe(2);
  });

  it('a large NAR is not kept in memory: without its file it is fetched again', async () => {
    const f = await makeStorePath([key], { name: 'large', size: 200_000 });
    upstream.publish(f);
    await warm(nw, f);
    await rm(objectPath(nw, f.narName));
    const again = await get(`/nar/${f.narName}`);
    expect(again.statusCode).toBe(200);
    expect(again.rawPayload.equals(f.file)).toBe(true);
    expect(again.headers['x-narwhal-source']).toBe('download');
    expect(upstream.count('GET', `/nar/${f.narName}`)).toBe(2);
  });

  it('a narinfo served lately is answered the same from memory, and counted as a hit', async () => {
    const f = await makeStorePath([key], { name: 'info' });
    upstream.publish(f);
    const first = await get(`/${f.hash}.narinfo`);
    const hitsBefore = await metric('narwhal_narinfo_requests_total', { result: 'hit' });
    const flow = vi.spyOn(nw.app.get(NarInfoService), 'get');
    const second = await get(`/${f.hash}.narinfo`);
    expect(flow).not.toHaveBeenCalled();
    flow.mockRestore();
    expect(second.statusCode).toBe(200);
    expect(second.body).toBe(first.body);
    expect(second.headers['content-type']).toBe(first.headers['content-type']);
    expect(second.headers['content-length']).toBe(String(Buffer.byteLength(first.body)));
    expect(await metric('narwhal_narinfo_requests_total', { result: 'hit' })).toBe(hitsBefore + 1);
    expect(upstream.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    // HEAD and names that are not narinfos go through the controller as before.
    const head = await nw.app.inject({ method: 'HEAD', url: `/${f.hash}.narinfo` });
    expect(head.statusCode).toBe(200);
    expect(head.headers['content-length']).toBe(String(Buffer.byteLength(first.body)));
    expect((await get(`/${f.hash}.nope`)).statusCode).toBe(404);
  });

  it('a Nix-like keep-alive connection (cache info, HEAD and GET of a narinfo, NARs small and large) is answered by the fast lane, never by node:http', async () => {
    const f = await makeStorePath([key], { name: 'lane', size: 1024 });
    // Too large to keep in memory: the lane sends its file with sendfile.
    const large = await makeStorePath([key], { name: 'lane-large', size: 300_000 });
    upstream.publish(f);
    upstream.publish(large);
    await warm(nw, f);
    await warm(nw, large);
    const hitsBefore = await metric('narwhal_nar_requests_total', { result: 'hit' });
    const bytesBefore = await metric('narwhal_served_bytes_total', { source: 'storage' });
    const viaNode = await nw.app.inject({ method: 'GET', url: '/nix-cache-info' });
    const lane = laneConnection();
    const { ask } = lane;
    try {
      const info = await ask('/nix-cache-info');
      expect(info.status).toBe(200);
      expect(info.body.toString()).toBe(viaNode.body);
      expect(info.type).toBe(viaNode.headers['content-type']);
      // Nix checks that the top path exists with a HEAD before it asks for anything else.
      const exists = await ask(`/${f.hash}.narinfo`, 'HEAD');
      const narinfo = await ask(`/${f.hash}.narinfo`);
      expect(narinfo.status).toBe(200);
      expect(exists.status).toBe(200);
      expect(exists.body.length).toBe(0);
      expect(exists.length).toBe(String(narinfo.body.length));
      const nar = await ask(`/nar/${f.narName}`);
      expect(nar.body.equals(f.file)).toBe(true);
      const big = await ask(`/nar/${large.narName}`);
      expect(big.status).toBe(200);
      expect(big.type).toBe(nar.type);
      expect(big.body.equals(large.file)).toBe(true);
      // The connection goes on in the lane after it.
      expect((await ask(`/${large.hash}.narinfo`)).status).toBe(200);
      expect(lane.sockets.size).toBe(1); // one connection, as Nix uses
      expect(lane.seenByNode()).toBe(0);
      expect(await metric('narwhal_nar_requests_total', { result: 'hit' })).toBe(hitsBefore + 2);
      expect(await metric('narwhal_served_bytes_total', { source: 'storage' })).toBe(
        bytesBefore + f.file.length + large.file.length,
      );
    } finally {
      lane.close();
    }
  });

  it('a NAR this instance has just downloaded is a hot hit at once: a copy of what it fetched stays in the fast lane', async () => {
    const f = await makeStorePath([key], { name: 'fresh', size: 2048 });
    const large = await makeStorePath([key], { name: 'fresh-large', size: 300_000 });
    upstream.publish(f);
    upstream.publish(large);
    // Downloaded once (the client gets the download itself), never served from storage.
    for (const p of [f, large]) {
      expect((await get(`/${p.hash}.narinfo`)).statusCode).toBe(200);
      const cold = await get(`/nar/${p.narName}`);
      expect(cold.statusCode).toBe(200);
      expect(cold.headers['x-narwhal-source']).not.toBe('storage');
      await waitStored(nw, p.narName, p.file);
    }
    // The small one is read back into memory right after it is stored.
    const memory = nw.app.get(RememberedNars);
    await vi.waitFor(() => expect(memory.answerable(f.narName, Date.now())?.bytes).toBeDefined());
    expect(memory.answerable(large.narName, Date.now())?.size).toBe(large.file.length);
    const lane = laneConnection();
    try {
      expect((await lane.ask(`/nar/${f.narName}`)).body.equals(f.file)).toBe(true);
      expect((await lane.ask(`/nar/${large.narName}`)).body.equals(large.file)).toBe(true);
      expect((await lane.ask(`/${f.hash}.narinfo`)).body.length).toBeGreaterThan(0);
      expect(lane.seenByNode()).toBe(0);
    } finally {
      lane.close();
    }
  });
});
