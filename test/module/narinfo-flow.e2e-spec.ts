import { beforeAll, describe, expect, it } from 'vitest';
import { narInfoFingerprint } from '../../src/nix/fingerprint';
import { parseNarInfo } from '../../src/nix/narinfo';
import { parsePublicKey, verifyFingerprint } from '../../src/signing/keys';
import { NarInfoService } from '../../src/narinfo/narinfo.service';
import { ownSigs, uncaughtDuring } from '../support/narwhal-app';
import { makeStorePath, randomHashPart, STORE_DIR } from '../support/store-paths';
import { useTwoUpstreams } from '../support/two-upstreams';

/**
 * The NarInfo Request Flow through Fastify inject: a narinfo looked up on the upstreams in order,
 * re-signed, served and then served again from the database; misses, HEAD, and concurrent lookups.
 */

const { keyA, keyB, primary, secondary, nw, inject } = useTwoUpstreams();
let narwhalKey: string;

beforeAll(async () => {
  narwhalKey = (await inject('GET', '/pubkey')).body.trim();
});

describe('narinfo request flow', () => {
  it('GET of an upstream narinfo: rewritten URL, upstream Sig kept, a valid narwhal Sig added', async () => {
    const ref = `${randomHashPart()}-dep`;
    const f = await makeStorePath([keyA], { references: [ref] });
    primary.publish(f);
    const res = await inject('GET', `/${f.hash}.narinfo`);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/x-nix-narinfo/);
    const served = parseNarInfo(res.body, { storeDir: STORE_DIR });
    expect(served).toMatchObject({
      storePath: f.storePath,
      url: `nar/${f.fileHash}.nar.xz`,
      compression: 'xz',
      fileHash: `sha256:${f.fileHash}`,
      fileSize: f.file.length,
      narHash: f.narInfo.narHash,
      narSize: f.narInfo.narSize,
      references: [ref],
      deriver: f.narInfo.deriver,
    });
    expect(served.sigs).toContain(f.narInfo.sigs[0]);
    expect(served.sigs).toHaveLength(2);
    const own = ownSigs(served);
    expect(own).toHaveLength(1);
    const fp = narInfoFingerprint(served, STORE_DIR);
    expect(verifyFingerprint(own[0], fp, [parsePublicKey(narwhalKey)])).toBe(true);
    expect(verifyFingerprint(f.narInfo.sigs[0], fp, [parsePublicKey(keyA.publicText)])).toBe(true);
    expect(primary.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    // Hedged: the secondary was asked at the same time, once at most.
    expect(secondary.count(undefined, `/${f.hash}.narinfo`)).toBeLessThanOrEqual(1);

    // A second GET comes from the database, with the same text.
    const again = await inject('GET', `/${f.hash}.narinfo`);
    expect(again.statusCode).toBe(200);
    expect(again.body).toBe(res.body);
    expect(primary.count(undefined, `/${f.hash}.narinfo`)).toBe(1);
  });

  it('HEAD of a narinfo: 200 with the GET length and no body; cold HEAD looks it up, warm HEAD does not ask again', async () => {
    const f = await makeStorePath([keyA]);
    primary.publish(f);
    const head = await inject('HEAD', `/${f.hash}.narinfo`);
    expect(head.statusCode).toBe(200);
    expect(head.body).toBe('');
    expect(head.headers['content-type']).toMatch(/^text\/x-nix-narinfo/);
    const full = await inject('GET', `/${f.hash}.narinfo`);
    expect(Number(head.headers['content-length'])).toBe(Buffer.byteLength(full.body));
    const head2 = await inject('HEAD', `/${f.hash}.narinfo`);
    expect(head2.statusCode).toBe(200);
    expect(primary.count(undefined, `/${f.hash}.narinfo`)).toBe(1);
    // HEAD never touches the NAR.
    expect(primary.count(undefined, `/nar/${f.narName}`)).toBe(0);
  });

  it('a hash no upstream has is a 404 for GET and HEAD, after asking each upstream', async () => {
    const hash = randomHashPart();
    const res = await inject('GET', `/${hash}.narinfo`);
    expect(res.statusCode).toBe(404);
    expect(primary.count('GET', `/${hash}.narinfo`)).toBe(1);
    expect(secondary.count('GET', `/${hash}.narinfo`)).toBe(1);
    const head = await inject('HEAD', `/${hash}.narinfo`);
    expect(head.statusCode).toBe(404);
  });

  it('a miss is remembered (negative cache) until forgotten; then the next GET finds it', async () => {
    const f = await makeStorePath([keyA]);
    expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(404);
    primary.publish(f);
    expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(404);
    expect(primary.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    nw.app.get(NarInfoService).forgetMiss(f.hash); // what an upload of the path does
    expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
    expect(primary.count('GET', `/${f.hash}.narinfo`)).toBe(2);
  });

  it('an upstream 404 for a narinfo raises no uncaught exception (it would crash `narwhal serve`)', async () => {
    const errors = await uncaughtDuring(async () => {
      expect((await inject('GET', `/${randomHashPart()}.narinfo`)).statusCode).toBe(404);
    });
    expect(errors).toEqual([]);
  });

  it('falls through to the next upstream when the first misses', async () => {
    const f = await makeStorePath([keyB]);
    secondary.publish(f);
    const res = await inject('GET', `/${f.hash}.narinfo`);
    expect(res.statusCode).toBe(200);
    expect(parseNarInfo(res.body, { storeDir: STORE_DIR }).sigs).toContain(f.narInfo.sigs[0]);
    expect(primary.count('GET', `/${f.hash}.narinfo`)).toBe(1);
  });

  it('a narinfo without FileHash/FileSize is served with a NarHash-named URL and no FileHash', async () => {
    const f = await makeStorePath([keyA], { withoutFileHash: true });
    primary.publish(f);
    const res = await inject('GET', `/${f.hash}.narinfo`);
    expect(res.statusCode).toBe(200);
    const served = parseNarInfo(res.body, { storeDir: STORE_DIR });
    expect(served.url).toBe(`nar/${f.narInfo.narHash.slice('sha256:'.length)}.nar.xz`);
    expect(served.fileHash).toBeUndefined();
    expect(served.fileSize).toBeUndefined();
    expect(
      verifyFingerprint(ownSigs(served)[0], narInfoFingerprint(served, STORE_DIR), [
        parsePublicKey(narwhalKey),
      ]),
    ).toBe(true);
  });

  it('20 concurrent GETs of one uncached hash make exactly one upstream narinfo request', async () => {
    const f = await makeStorePath([keyA]);
    primary.publish(f);
    primary.setNarInfo(f.hash, f.narInfo, { delayMs: 200 });
    const all = await Promise.all(
      Array.from({ length: 20 }, () => inject('GET', `/${f.hash}.narinfo`)),
    );
    expect(all.map((r) => r.statusCode)).toEqual(Array(20).fill(200));
    expect(new Set(all.map((r) => r.body)).size).toBe(1);
    expect(primary.count(undefined, `/${f.hash}.narinfo`)).toBe(1);
    // Hedged: the secondary is asked at the same time, once for all 20.
    expect(secondary.count(undefined, `/${f.hash}.narinfo`)).toBe(1);
  });

  it('20 concurrent GETs of one hash nobody has make one request per upstream and all get 404', async () => {
    const hash = randomHashPart();
    primary.set(`/${hash}.narinfo`, { kind: 'status', status: 404 });
    const all = await Promise.all(
      Array.from({ length: 20 }, () => inject('GET', `/${hash}.narinfo`)),
    );
    expect(all.map((r) => r.statusCode)).toEqual(Array(20).fill(404));
    expect(primary.count(undefined, `/${hash}.narinfo`)).toBe(1);
    expect(secondary.count(undefined, `/${hash}.narinfo`)).toBe(1);
  });
});
