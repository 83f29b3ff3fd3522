import { rm } from 'node:fs/promises';
import { describe, expect, it, vi } from 'vitest';
import { parseNarInfo } from '../../src/nix/narinfo';
import { RememberedNars } from '../../src/nar/stored-nar-memory';
import { snapshot } from '../support/files';
import { sha256Nix32 } from '../support/hash';
import { httpGet } from '../support/http-client';
import { objectPath, uncaughtDuring, waitStored } from '../support/narwhal-app';
import { makeStorePath, STORE_DIR } from '../support/store-paths';
import { useTwoUpstreams } from '../support/two-upstreams';

/**
 * The NAR Download Flow through Fastify inject: a NAR downloaded once from upstream while it is
 * served, stored, then served from storage; HEAD, concurrent clients, a client that goes away, a NAR
 * asked for without its narinfo and one that vanished from storage.
 */

// NAR prefetch off: these tests count the upstream GETs that clients' requests (HEAD, GET) cause.
const { keyA, primary, secondary, nw, inject } = useTwoUpstreams({
  'cache-prefetch-nars': 'false',
});

describe('NAR download flow', () => {
  it('GET after the narinfo: the right bytes and length from upstream, then from storage without asking again', async () => {
    const f = await makeStorePath([keyA], { size: 300_000 });
    primary.publish(f);
    const info = parseNarInfo((await inject('GET', `/${f.hash}.narinfo`)).body, {
      storeDir: STORE_DIR,
    });
    const cold = await inject('GET', `/${info.url}`);
    expect(cold.statusCode).toBe(200);
    expect(cold.headers['content-type']).toBe('application/x-nix-nar');
    expect(cold.headers['x-narwhal-source']).toBe('download');
    expect(Number(cold.headers['content-length'])).toBe(f.file.length);
    expect(cold.rawPayload.equals(f.file)).toBe(true);
    expect(primary.count('GET', `/nar/${f.narName}`)).toBe(1);

    await waitStored(nw, f.narName, f.file);
    const warm = await inject('GET', `/${info.url}`);
    expect(warm.statusCode).toBe(200);
    expect(warm.headers['x-narwhal-source']).toBe('storage');
    expect(Number(warm.headers['content-length'])).toBe(f.file.length);
    expect(warm.rawPayload.equals(f.file)).toBe(true);
    expect(primary.count(undefined, `/nar/${f.narName}`)).toBe(1);
    expect(sha256Nix32(warm.rawPayload)).toBe(f.fileHash);
  });

  it('HEAD of a NAR does not download it (no upstream GET, nothing stored); HEAD of a stored one asks nobody', async () => {
    const f = await makeStorePath([keyA], { size: 100_000 });
    primary.publish(f);
    expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
    const before = await snapshot(nw.storeRoot);
    const head = await inject('HEAD', `/nar/${f.narName}`);
    expect(head.statusCode).toBe(200);
    expect(head.body).toBe('');
    expect(Number(head.headers['content-length'])).toBe(f.file.length);
    expect(primary.count('GET', `/nar/${f.narName}`)).toBe(0);
    expect(await snapshot(nw.storeRoot)).toEqual(before);

    expect((await inject('GET', `/nar/${f.narName}`)).statusCode).toBe(200);
    await waitStored(nw, f.narName, f.file);
    const seen = primary.requests.length;
    const warmHead = await inject('HEAD', `/nar/${f.narName}`);
    expect(warmHead.statusCode).toBe(200);
    expect(Number(warmHead.headers['content-length'])).toBe(f.file.length);
    expect(primary.requests.length).toBe(seen);
  });

  it('HEAD of a NAR raises no uncaught exception (it would crash `narwhal serve`)', async () => {
    const f = await makeStorePath([keyA]);
    primary.publish(f);
    expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
    const errors = await uncaughtDuring(async () => {
      expect((await inject('HEAD', `/nar/${f.narName}`)).statusCode).toBe(200);
    });
    expect(errors).toEqual([]);
  });

  it('HEAD of a NAR whose upstream copy is gone is a 404 (a 200 would make `nix copy` skip an upload)', async () => {
    const f = await makeStorePath([keyA]);
    primary.publish(f);
    expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
    primary.delete(`/nar/${f.narName}`);
    expect((await inject('HEAD', `/nar/${f.narName}`)).statusCode).toBe(404);
    expect(primary.count('GET', `/nar/${f.narName}`)).toBe(0);
  });

  it('HEAD of a NAR nobody announced is a 404 and asks no upstream for its bytes', async () => {
    const f = await makeStorePath([keyA]);
    const head = await inject('HEAD', `/nar/${f.narName}`);
    expect(head.statusCode).toBe(404);
    expect(primary.count('GET', `/nar/${f.narName}`)).toBe(0);
  });

  it('20 concurrent cold GETs of one NAR share one upstream download and all get the right bytes', async () => {
    const f = await makeStorePath([keyA], { size: 2_000_000 });
    primary.publish(f);
    expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
    const all = await Promise.all(
      Array.from({ length: 20 }, () => inject('GET', `/nar/${f.narName}`)),
    );
    for (const r of all) {
      expect(r.statusCode).toBe(200);
      expect(r.rawPayload.equals(f.file)).toBe(true);
    }
    expect(primary.count('GET', `/nar/${f.narName}`)).toBe(1);
  });

  it('a NAR asked for without its narinfo is fetched from upstream nar/<name>, verified by the name, stored', async () => {
    const f = await makeStorePath([keyA]);
    secondary.set(`/nar/${f.narName}`, { kind: 'serve', body: f.file });
    const res = await inject('GET', `/nar/${f.narName}`);
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(f.file)).toBe(true);
    expect(primary.count('GET', `/nar/${f.narName}`)).toBe(1); // asked first, missed
    expect(secondary.count('GET', `/nar/${f.narName}`)).toBe(1);
    await waitStored(nw, f.narName, f.file);
    const warm = await inject('GET', `/nar/${f.narName}`);
    expect(warm.headers['x-narwhal-source']).toBe('storage');
    expect(warm.rawPayload.equals(f.file)).toBe(true);
    expect(secondary.count('GET', `/nar/${f.narName}`)).toBe(1);
  });

  it('a NAR nobody has, asked for without a narinfo, is a 404', async () => {
    const f = await makeStorePath([keyA]);
    const res = await inject('GET', `/nar/${f.narName}`);
    expect(res.statusCode).toBe(404);
  });

  it('a client that goes away mid-download does not abort it: the NAR is stored for the next one', async () => {
    const f = await makeStorePath([keyA], { size: 1_500_000 });
    primary.publish(f);
    primary.set(`/nar/${f.narName}`, { kind: 'serve', body: f.file, chunkDelayMs: 20 });
    expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
    // The client hangs up as soon as the first bytes arrive.
    await httpGet(`${nw.url}/nar/${f.narName}`, { stopAfterBytes: 1 });
    await waitStored(nw, f.narName, f.file);
    const warm = await inject('GET', `/nar/${f.narName}`);
    expect(warm.headers['x-narwhal-source']).toBe('storage');
    expect(warm.rawPayload.equals(f.file)).toBe(true);
    expect(primary.count('GET', `/nar/${f.narName}`)).toBe(1);
  });

  it('a stored NAR that vanished from storage is fetched again (and stored again)', async () => {
    const f = await makeStorePath([keyA]);
    primary.publish(f);
    expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
    expect((await inject('GET', `/nar/${f.narName}`)).statusCode).toBe(200);
    await waitStored(nw, f.narName, f.file);
    await rm(objectPath(nw, f.narName));
    // A small NAR just downloaded is also held in memory (see hot-hits): served from there, the
    // right bytes, until it is forgotten (as a delete does everywhere) or leaves memory.
    const memory = nw.app.get(RememberedNars);
    await vi.waitFor(() => expect(memory.answerable(f.narName, Date.now())?.bytes).toBeDefined());
    const fromMemory = await inject('GET', `/nar/${f.narName}`);
    expect(fromMemory.rawPayload.equals(f.file)).toBe(true);
    expect(primary.count('GET', `/nar/${f.narName}`)).toBe(1);
    await memory.forgetEverywhere(f.narName);
    const res = await inject('GET', `/nar/${f.narName}`);
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(f.file)).toBe(true);
    expect(primary.count('GET', `/nar/${f.narName}`)).toBe(2);
    await waitStored(nw, f.narName, f.file);
  });

  it('a NAR whose narinfo has no FileHash is verified by its NarHash', async () => {
    const f = await makeStorePath([keyA], { withoutFileHash: true });
    primary.publish(f);
    const info = parseNarInfo((await inject('GET', `/${f.hash}.narinfo`)).body, {
      storeDir: STORE_DIR,
    });
    const res = await inject('GET', `/${info.url}`);
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(f.file)).toBe(true);
  });
});
