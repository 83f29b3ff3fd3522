import { readFile } from 'node:fs/promises';
import { describe, expect, it, vi } from 'vitest';
import { eventually } from '../../test/support/wait';
import { useServiceModule } from '../../test/support/service-module';
import { makeStorePath, randomHashPart, sign, STORE_DIR } from '../../test/support/store-paths';
import { sha256Nix32 } from '../../test/support/hash';
import { NotFoundError } from '../common/errors';
import { narInfoLockKey } from '../locking/lock-keys';
import { InvalidHashError } from '../nix/errors';
import { narInfoFingerprint } from '../nix/fingerprint';
import { parseNarInfo, serializeNarInfo, type NarInfo } from '../nix/narinfo';
import {
  formatPublicKey,
  parsePublicKey,
  parseSecretKey,
  verifyFingerprint,
} from '../signing/keys';
import { PeerClient } from '../nar/peer-client';
import { StoredNarCheck } from '../nar/stored-nar-check';
import { VERIFIER_POOL_PROVIDER } from '../nar/verification/verifier-pool';
import { NarInfoEvents } from './narinfo-events';
import { NarInfoService, RECENT_STALE_MS } from './narinfo.service';
import { RememberedNars } from '../nar/stored-nar-memory';

/**
 * The narinfo request flow, step by step, on the real providers: SQLite, LocalLocker, narwhal's own
 * signing key and two real upstream servers (see test/support/service-module.ts).
 */

// NarInfoService checks a NAR stored before its narinfo with StoredNarCheck, from the NAR module.
const t = useServiceModule([
  RememberedNars,
  NarInfoService,
  NarInfoEvents,
  StoredNarCheck,
  PeerClient,
  VERIFIER_POOL_PROVIDER,
]);
const service = () => t.module.get(NarInfoService);
const parse = (text: string) => parseNarInfo(text, { storeDir: STORE_DIR });
const narInfoPath = (hash: string) => `/${hash}.narinfo`;

/** narwhal's public key, read from the secret key file the module generated in its data path. */
async function ownPublicKey() {
  const secret = parseSecretKey(await readFile(t.module.config.signing.secretKeyPath, 'utf8'));
  return { name: secret.name, key: secret.publicKey };
}

describe('NarInfoService: a miss', () => {
  it('asks the upstreams (at once: hedged) and takes the highest-priority validly signed answer', async () => {
    const f = await makeStorePath([t.keyA, t.keyB]);
    t.primary.publish(f);
    t.secondary.publish(f);

    await service().get(f.hash);

    expect(t.primary.count('GET', narInfoPath(f.hash))).toBe(1);
    expect(t.secondary.count('GET', narInfoPath(f.hash))).toBeLessThanOrEqual(1);
    expect((await t.module.narInfos.find(f.hash))?.upstreamUrl).toBe(t.primary.url);
  });

  it('stores the narinfo, its references and signatures, and the row of its NAR file', async () => {
    const refs = [`${randomHashPart()}-dep-one`, `${randomHashPart()}-dep-two`];
    const f = await makeStorePath([t.keyA, t.keyB], { name: 'with-refs', references: refs });
    t.primary.publish(f);

    await service().get(f.hash);

    const row = await t.module.narInfos.find(f.hash);
    expect(row).toMatchObject({
      storePath: f.storePath,
      narKey: f.narName,
      compression: 'xz',
      fileHash: `sha256:${f.fileHash}`,
      fileSize: f.file.length,
      narHash: f.narInfo.narHash,
      narSize: f.nar.length,
      deriver: f.narInfo.deriver,
      upstreamUrl: t.primary.url,
    });
    expect(row?.references.map((r) => r.reference)).toEqual(refs);
    expect(row?.signatures.map((s) => s.signature)).toEqual(f.narInfo.sigs);
    expect(await t.module.narFiles.find(f.narName)).toMatchObject({
      upstreamUrl: `${t.primary.url}/nar/${f.narName}`,
      compression: 'xz',
      fileHash: `sha256:${f.fileHash}`,
      fileSize: f.file.length,
      narHash: f.narInfo.narHash,
      narSize: f.nar.length,
      storedSize: null,
    });
  });

  it("serves it under narwhal's NAR name with the upstream signature kept and narwhal's own added", async () => {
    const f = await makeStorePath([t.keyA], { url: 'blobs/upstream-name.xz' });
    t.primary.publish(f);

    const served = parse(await service().get(f.hash));

    expect(served.url).toBe(`nar/${f.fileHash}.nar.xz`);
    expect(served.narHash).toBe(f.narInfo.narHash);
    const fingerprint = narInfoFingerprint(served, STORE_DIR);
    const [upstreamSig, ownSig, ...rest] = served.sigs;
    expect(rest).toEqual([]);
    expect(upstreamSig).toBe(f.narInfo.sigs[0]);
    expect(verifyFingerprint(upstreamSig, fingerprint, [parsePublicKey(t.keyA.publicText)])).toBe(
      true,
    );
    expect(ownSig.startsWith('narwhal-test:')).toBe(true);
    expect(verifyFingerprint(ownSig, fingerprint, [await ownPublicKey()])).toBe(true);
    // The NAR's own upstream URL is kept for the download, whatever its name there.
    expect((await t.module.narFiles.find(f.narName))?.upstreamUrl).toBe(
      `${t.primary.url}/blobs/upstream-name.xz`,
    );
    // The signature is made once and kept with the narinfo.
    const own = formatPublicKey(await ownPublicKey());
    await eventually(
      async () => (await t.module.narInfos.find(f.hash))?.ownSignature === `${own}|${ownSig}`,
      5000,
      'own signature cached in the row',
    );
  });

  it('names the NAR by its NarHash when the narinfo has no FileHash', async () => {
    const f = await makeStorePath([t.keyA], { withoutFileHash: true });
    t.primary.publish(f);

    const served = parse(await service().get(f.hash));

    expect(served.url).toBe(`nar/${sha256Nix32(f.nar)}.nar.xz`);
    expect(served.fileHash).toBeUndefined();
    expect(await t.module.narFiles.find(`${sha256Nix32(f.nar)}.nar.xz`)).toMatchObject({
      fileHash: null,
      narHash: f.narInfo.narHash,
    });
  });

  const refusals: [string, (n: NarInfo) => NarInfo | string][] = [
    [
      'describes another store path',
      (n) => sign({ ...n, storePath: `${STORE_DIR}/${randomHashPart()}-other` }, [t.keyA]),
    ],
    ['is unsigned', (n) => ({ ...n, sigs: [] })],
    ['is signed by an untrusted key', (n) => sign({ ...n }, [t.untrusted])],
    ['has a signature that does not cover it', (n) => ({ ...n, narSize: n.narSize + 1 })],
    ['is malformed', () => 'StorePath: nonsense\nthis is not a narinfo\n'],
  ];

  it.each(refusals)('refuses an answer that %s and asks the next upstream', async (_, spoil) => {
    const f = await makeStorePath([t.keyA]);
    const bad = spoil({ ...f.narInfo, sigs: [...f.narInfo.sigs] });
    t.primary.setNarInfo(f.hash, typeof bad === 'string' ? bad : serializeNarInfo(bad));
    t.secondary.publish(f, sign({ ...f.narInfo }, [t.keyB]));

    const served = parse(await service().get(f.hash));

    expect(served.storePath).toBe(f.storePath);
    expect(t.primary.count('GET', narInfoPath(f.hash))).toBe(1);
    expect(t.secondary.count('GET', narInfoPath(f.hash))).toBe(1);
    const row = await t.module.narInfos.find(f.hash);
    expect(row?.upstreamUrl).toBe(t.secondary.url);
    expect(row?.signatures.map((s) => s.signature)).toEqual(sign({ ...f.narInfo }, [t.keyB]).sigs);
  });

  it('is a NotFoundError when every upstream fails or misses; nothing is kept and the next request asks again', async () => {
    const f = await makeStorePath([t.keyA]);
    t.primary.set(narInfoPath(f.hash), { kind: 'status', status: 500 });

    await expect(service().get(f.hash)).rejects.toBeInstanceOf(NotFoundError);

    expect(t.primary.count('GET', narInfoPath(f.hash))).toBe(1);
    expect(t.secondary.count('GET', narInfoPath(f.hash))).toBe(1);
    expect(await t.module.narInfos.count()).toBe(0);
    expect(await t.module.narFiles.find(f.narName)).toBeNull();

    t.secondary.publish(f, sign({ ...f.narInfo }, [t.keyB]));
    expect(parse(await service().get(f.hash)).storePath).toBe(f.storePath);
    expect(t.secondary.count('GET', narInfoPath(f.hash))).toBe(2);
  });

  it('refuses an invalid hash before any lookup', async () => {
    const before = t.primary.requests.length + t.secondary.requests.length;
    await expect(service().get('not-a-hash')).rejects.toBeInstanceOf(InvalidHashError);
    expect(t.primary.requests.length + t.secondary.requests.length).toBe(before);
  });
});

describe('NarInfoService: concurrency and the lock', () => {
  it('concurrent misses of one hash make one lookup: one lock acquisition, one upstream request', async () => {
    const f = await makeStorePath([t.keyA]);
    t.primary.publish(f);
    const { locker, narInfos } = t.module;
    const acquire = vi.spyOn(locker, 'acquire');
    const find = vi.spyOn(narInfos, 'find');
    // Hold the hash's lock until every request has seen the miss and is waiting for the lookup.
    const key = narInfoLockKey(f.hash);
    const lease = await locker.acquire(key, 60_000);
    const gets = Array.from({ length: 10 }, () => service().get(f.hash));
    await eventually(
      () => find.mock.settledResults.filter((r) => r.type === 'fulfilled').length >= 10,
      5000,
      'ten misses',
    );
    await eventually(() => acquire.mock.calls.length >= 2, 5000, 'a lookup waits for the lock');
    await lease.release();

    const texts = await Promise.all(gets);

    expect(new Set(texts).size).toBe(1);
    expect(parse(texts[0]).storePath).toBe(f.storePath);
    expect(acquire.mock.calls.filter(([k]) => k === key)).toHaveLength(2); // ours and one lookup
    expect(t.primary.count('GET', narInfoPath(f.hash))).toBe(1);
  });

  it('a lookup that waited for the lock serves what the holder stored meanwhile, without asking upstream', async () => {
    const f = await makeStorePath([t.keyA]);
    t.primary.publish(f); // would be fetched if the lookup did not look again under the lock
    const { locker } = t.module;
    const acquire = vi.spyOn(locker, 'acquire');
    const key = narInfoLockKey(f.hash);
    const lease = await locker.acquire(key, 60_000, 'another instance');

    const get = service().get(f.hash);
    await eventually(() => acquire.mock.calls.length >= 2, 5000, 'the lookup waits for the lock');
    await t.recordNarInfo(f, t.secondary, sign({ ...f.narInfo }, [t.keyB]));
    await lease.release();

    const served = parse(await get);
    expect(served.storePath).toBe(f.storePath);
    expect(served.sigs[0]).toBe(sign({ ...f.narInfo }, [t.keyB]).sigs[0]);
    expect(t.primary.count('GET', narInfoPath(f.hash))).toBe(0);
    expect(t.secondary.count('GET', narInfoPath(f.hash))).toBe(0);
  });
});

describe('NarInfoService: a hit', () => {
  it('is served from the database without an upstream request', async () => {
    const f = await makeStorePath([t.keyA]);
    await t.recordNarInfo(f, t.primary); // stored earlier (or by another instance)
    const acquire = vi.spyOn(t.module.locker, 'acquire');

    const served = parse(await service().get(f.hash));

    expect(served).toMatchObject({
      storePath: f.storePath,
      url: `nar/${f.narName}`,
      narHash: f.narInfo.narHash,
    });
    expect(
      verifyFingerprint(served.sigs[1], narInfoFingerprint(served, STORE_DIR), [
        await ownPublicKey(),
      ]),
    ).toBe(true);
    expect(acquire).not.toHaveBeenCalled(); // no lookup, not even one that finds the row
    expect(t.primary.count('GET', narInfoPath(f.hash))).toBe(0);
    expect(t.secondary.count('GET', narInfoPath(f.hash))).toBe(0);
  });

  it('is answered again from memory: the same text with its row gone and no database read', async () => {
    const f = await makeStorePath([t.keyA]);
    t.primary.publish(f);
    const first = await service().get(f.hash);
    await t.module.narFiles.deleteWithNarInfos(f.narName);
    expect(await t.module.narInfos.find(f.hash)).toBeNull();
    const find = vi.spyOn(t.module.narInfos, 'find');

    expect(await service().get(f.hash)).toBe(first);

    expect(find).not.toHaveBeenCalled();
    expect(t.primary.count('GET', narInfoPath(f.hash))).toBe(1);
  });

  it('past its TTL is still answered by the hot path while the database is asked: renewed, then forgotten once deleted', async () => {
    const f = await makeStorePath([t.keyA]);
    t.primary.publish(f);
    const text = await service().get(f.hash);
    const find = vi.spyOn(t.module.narInfos, 'find');
    const realNow = Date.now.bind(Date);
    let offset = 0;
    const clock = vi.spyOn(Date, 'now').mockImplementation(() => realNow() + offset);
    try {
      expect(service().recentBytes(f.hash)?.toString()).toBe(text);
      expect(find).not.toHaveBeenCalled();
      // 31 s later: the same bytes at once, and one database read in the background that renews it.
      offset = 31_000;
      expect(service().recentBytes(f.hash)?.toString()).toBe(text);
      expect(service().recentBytes(f.hash)?.toString()).toBe(text);
      await eventually(() => find.mock.results.length === 1, 5000, 'checked');
      await find.mock.results[0].value;
      await new Promise((done) => setImmediate(done));
      offset = 60_000; // within the renewed TTL: no further read
      expect(service().recentBytes(f.hash)?.toString()).toBe(text);
      expect(find).toHaveBeenCalledTimes(1);

      // Deleted without this instance being told: one more stale answer, then it is forgotten.
      await t.module.narFiles.deleteWithNarInfos(f.narName);
      offset = 120_000;
      expect(service().recentBytes(f.hash)?.toString()).toBe(text);
      await eventually(() => service().recentBytes(f.hash) === undefined, 5000, 'forgotten');
      await expect(service().get(f.hash)).resolves.toBeDefined(); // fetched again from upstream
      expect(t.primary.count('GET', narInfoPath(f.hash))).toBe(2);

      // Not asked for within RECENT_STALE_MS past its TTL: the hot path leaves it to get().
      offset += 30_000 + RECENT_STALE_MS;
      expect(service().recentBytes(f.hash)).toBeUndefined();
    } finally {
      clock.mockRestore();
    }
  });
});
