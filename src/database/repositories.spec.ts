import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DataSource } from 'typeorm';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { encodeNix32 } from '../nix/base32';
import type { NarInfo } from '../nix/narinfo';
import { openDataSource } from './data-source';
import { NarFileRepository } from './nar-file.repository';
import { NarInfoRepository, TOUCH_GRANULARITY_MS, type NewNarInfo } from './narinfo.repository';

/** A 32-character store path hash part derived from `seed`. */
function hashPart(seed: string): string {
  return encodeNix32(createHash('sha256').update(`part:${seed}`).digest().subarray(0, 20));
}

function sha256(seed: string): string {
  return `sha256:${encodeNix32(createHash('sha256').update(seed).digest())}`;
}

function narKeyOf(seed: string): string {
  return `${encodeNix32(createHash('sha256').update(`file:${seed}`).digest())}.nar.xz`;
}

function newNarInfo(
  name: string,
  opts: {
    refs?: string[];
    sigs?: string[];
    narKey?: string;
    fileSize?: number;
    narSize?: number;
  } = {},
): NewNarInfo {
  const hash = hashPart(name);
  const narKey = opts.narKey ?? narKeyOf(name);
  const narInfo: NarInfo = {
    storePath: `/nix/store/${hash}-${name}`,
    url: `nar/${narKey}`,
    compression: 'xz',
    fileHash: `sha256:${narKey.slice(0, 52)}`,
    fileSize: opts.fileSize ?? 1234,
    narHash: sha256(`nar:${name}`),
    narSize: opts.narSize ?? 5678,
    references: opts.refs ?? [],
    deriver: `${hashPart(`${name}.drv`)}-${name}.drv`,
    system: 'x86_64-linux',
    sigs: opts.sigs ?? [],
  };
  return {
    hash,
    narInfo,
    narKey,
    upstreamUrl: 'https://cache.example.org',
    narUpstreamUrl: `https://cache.example.org/nar/${narKey}?x=1`,
  };
}

function sig(key: string, n: number): string {
  return `${key}:${Buffer.alloc(64, n).toString('base64')}`;
}

let dir: string;
let ds: DataSource;
let narInfos: NarInfoRepository;
let files: NarFileRepository;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'narwhal-db-'));
  ds = await openDataSource({ kind: 'sqlite', path: join(dir, 'narwhal.sqlite') });
  narInfos = new NarInfoRepository(ds);
  files = new NarFileRepository(ds);
});

afterEach(async () => {
  if (ds?.isInitialized) await ds.destroy();
  await rm(dir, { recursive: true, force: true });
});

async function count(table: string, where = '1 = 1', params: unknown[] = []): Promise<number> {
  const rows = await ds.query<Array<{ n: number }>>(
    `SELECT COUNT(*) AS n FROM ${table} WHERE ${where}`,
    params,
  );
  return Number(rows[0].n);
}

describe('openDataSource', () => {
  it('creates the schema on a fresh file and can open it again', async () => {
    const tables = (
      await ds.query<Array<{ name: string }>>("SELECT name FROM sqlite_master WHERE type = 'table'")
    ).map((t) => t.name);
    expect(tables).toEqual(
      expect.arrayContaining(['nar_files', 'narinfos', 'narinfo_references', 'narinfo_signatures']),
    );
    await narInfos.save(newNarInfo('persisted'));
    await ds.destroy();
    ds = await openDataSource({ kind: 'sqlite', path: join(dir, 'narwhal.sqlite') });
    expect(await new NarInfoRepository(ds).find(hashPart('persisted'))).not.toBeNull();
  });

  it('enforces foreign keys', async () => {
    const rows = await ds.query<Array<{ foreign_keys: number }>>('PRAGMA foreign_keys');
    expect(Number(rows[0].foreign_keys)).toBe(1);
  });
});

describe('NarInfoRepository.save / find', () => {
  it('round-trips every field, with references and signatures in their original order', async () => {
    // Deliberately not sorted, so that order by value and order by position differ.
    const refs = [
      `${hashPart('zeta')}-zeta`,
      `${hashPart('alpha')}-alpha`,
      `${hashPart('mid')}-mid`,
      `${hashPart('self')}-self`,
    ];
    const sigs = [sig('z-key-1', 1), sig('a-key-1', 2), sig('m-key-1', 3)];
    const n = newNarInfo('self', { refs, sigs, fileSize: 5_000_000_000, narSize: 9_000_000_000 });
    n.narInfo.ca = 'fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s';
    await narInfos.save(n, 1_700_000_000_000);

    const row = await narInfos.find(n.hash);
    expect(row).not.toBeNull();
    expect(row!.hash).toBe(n.hash);
    expect(row!.storePath).toBe(n.narInfo.storePath);
    expect(row!.narKey).toBe(n.narKey);
    expect(row!.compression).toBe('xz');
    expect(row!.fileHash).toBe(n.narInfo.fileHash);
    expect(row!.fileSize).toBe(5_000_000_000);
    expect(row!.narHash).toBe(n.narInfo.narHash);
    expect(row!.narSize).toBe(9_000_000_000);
    expect(row!.deriver).toBe(n.narInfo.deriver);
    expect(row!.system).toBe('x86_64-linux');
    expect(row!.ca).toBe(n.narInfo.ca);
    expect(row!.upstreamUrl).toBe('https://cache.example.org');
    expect(row!.ownSignature).toBeNull();
    expect(row!.createdAt).toBe(1_700_000_000_000);
    expect(row!.lastAccessedAt).toBe(1_700_000_000_000);
    expect(row!.references.map((r) => r.reference)).toEqual(refs);
    expect(row!.references.map((r) => r.position)).toEqual([0, 1, 2, 3]);
    expect(row!.signatures.map((s) => s.signature)).toEqual(sigs);
  });

  it('keeps order for many references (more than ten, so text order of positions would differ)', async () => {
    const refs = Array.from({ length: 25 }, (_, i) => `${hashPart(`r${24 - i}`)}-r${24 - i}`);
    const n = newNarInfo('many', { refs });
    await narInfos.save(n);
    expect((await narInfos.find(n.hash))!.references.map((r) => r.reference)).toEqual(refs);
  });

  it('stores optional fields as null and an empty reference list as empty', async () => {
    const n = newNarInfo('bare');
    delete n.narInfo.fileHash;
    delete n.narInfo.fileSize;
    delete n.narInfo.deriver;
    delete n.narInfo.system;
    await narInfos.save(n);
    const row = await narInfos.find(n.hash);
    expect(row!.fileHash).toBeNull();
    expect(row!.fileSize).toBeNull();
    expect(row!.deriver).toBeNull();
    expect(row!.system).toBeNull();
    expect(row!.ca).toBeNull();
    expect(row!.references).toEqual([]);
    expect(row!.signatures).toEqual([]);
    const file = await files.find(n.narKey);
    expect(file!.fileHash).toBeNull();
    expect(file!.fileSize).toBeNull();
  });

  it('finds nothing for an unknown hash', async () => {
    expect(await narInfos.find(hashPart('never'))).toBeNull();
  });

  it('creates the NAR file row, not stored yet', async () => {
    const n = newNarInfo('withfile');
    await narInfos.save(n, 1000);
    const f = await files.find(n.narKey);
    expect(f).toMatchObject({
      key: n.narKey,
      upstreamUrl: n.narUpstreamUrl,
      compression: 'xz',
      fileHash: n.narInfo.fileHash,
      fileSize: 1234,
      narHash: n.narInfo.narHash,
      narSize: 5678,
      storedSize: null,
      createdAt: 1000,
      lastAccessedAt: 1000,
    });
  });

  it('replaces a narinfo saved twice, without duplicate children', async () => {
    const first = newNarInfo('twice', {
      refs: [`${hashPart('a')}-a`, `${hashPart('b')}-b`, `${hashPart('c')}-c`],
      sigs: [sig('k1', 1), sig('k2', 2)],
    });
    await narInfos.save(first, 1000);
    const second = newNarInfo('twice', { refs: [`${hashPart('d')}-d`], sigs: [sig('k3', 3)] });
    second.upstreamUrl = 'https://other.example.org';
    await narInfos.save(second, 2000);

    const row = await narInfos.find(second.hash);
    expect(row!.references.map((r) => r.reference)).toEqual([`${hashPart('d')}-d`]);
    expect(row!.signatures.map((s) => s.signature)).toEqual([sig('k3', 3)]);
    expect(row!.upstreamUrl).toBe('https://other.example.org');
    expect(row!.createdAt).toBe(2000);
    expect(await count('narinfos')).toBe(1);
    expect(await count('narinfo_references')).toBe(1);
    expect(await count('narinfo_signatures')).toBe(1);
    expect(await count('nar_files')).toBe(1);
  });

  it('saving a narinfo again keeps what is known about its stored NAR', async () => {
    const n = newNarInfo('stored');
    await narInfos.save(n, 1000);
    await files.markStored(n.narKey, 999, 1500);
    await narInfos.save(n, 2000);
    const f = await files.find(n.narKey);
    expect(f!.storedSize).toBe(999);
    expect(f!.lastAccessedAt).toBe(1500);
  });

  it('keeps narinfos independent', async () => {
    const a = newNarInfo('a', { refs: [`${hashPart('x')}-x`], sigs: [sig('k', 1)] });
    const b = newNarInfo('b', {
      refs: [`${hashPart('y')}-y`, `${hashPart('z')}-z`],
      sigs: [sig('k', 2)],
    });
    await narInfos.save(a);
    await narInfos.save(b);
    await narInfos.save(a);
    expect((await narInfos.find(b.hash))!.references.map((r) => r.reference)).toEqual([
      `${hashPart('y')}-y`,
      `${hashPart('z')}-z`,
    ]);
    expect(await count('narinfo_references')).toBe(3);
  });

  it('is all or nothing: a failing save leaves no partial rows', async () => {
    const n = newNarInfo('atomic', { refs: [`${hashPart('a')}-a`] });
    // A reference that cannot be stored (NOT NULL) makes the transaction fail after the narinfo insert.
    (n.narInfo.references as Array<string | null>).push(null);
    await expect(narInfos.save(n)).rejects.toThrow();
    expect(await count('narinfos')).toBe(0);
    expect(await count('narinfo_references')).toBe(0);
    expect(await count('nar_files')).toBe(0);
  });

  it('setOwnSignature stores narwhal’s signature', async () => {
    const n = newNarInfo('signed');
    await narInfos.save(n);
    await narInfos.setOwnSignature(n.hash, sig('narwhal-1', 9));
    expect((await narInfos.find(n.hash))!.ownSignature).toBe(sig('narwhal-1', 9));
  });
});

describe('touch', () => {
  const t0 = 1_700_000_000_000;

  it('NarInfoRepository.touch writes only when the last access is older than the granularity', async () => {
    const n = newNarInfo('touched');
    await narInfos.save(n, t0);

    await narInfos.touch(n.hash, n.narKey, t0 + TOUCH_GRANULARITY_MS - 1);
    expect((await narInfos.find(n.hash))!.lastAccessedAt).toBe(t0);
    expect((await files.find(n.narKey))!.lastAccessedAt).toBe(t0);

    await narInfos.touch(n.hash, n.narKey, t0 + TOUCH_GRANULARITY_MS);
    expect((await narInfos.find(n.hash))!.lastAccessedAt).toBe(t0);

    await narInfos.touch(n.hash, n.narKey, t0 + TOUCH_GRANULARITY_MS + 1);
    expect((await narInfos.find(n.hash))!.lastAccessedAt).toBe(t0 + TOUCH_GRANULARITY_MS + 1);
    expect((await files.find(n.narKey))!.lastAccessedAt).toBe(t0 + TOUCH_GRANULARITY_MS + 1);
  });

  it('NarInfoRepository.touch never moves the time backwards', async () => {
    const n = newNarInfo('back');
    await narInfos.save(n, t0);
    await narInfos.touch(n.hash, n.narKey, t0 - 10 * TOUCH_GRANULARITY_MS);
    expect((await narInfos.find(n.hash))!.lastAccessedAt).toBe(t0);
  });

  it('NarFileRepository.touch writes only when the last access is older than the granularity', async () => {
    const n = newNarInfo('file-touched');
    await narInfos.save(n, t0);
    await files.touch(n.narKey, t0 + 1000);
    expect((await files.find(n.narKey))!.lastAccessedAt).toBe(t0);
    await files.touch(n.narKey, t0 + TOUCH_GRANULARITY_MS + 1000);
    expect((await files.find(n.narKey))!.lastAccessedAt).toBe(t0 + TOUCH_GRANULARITY_MS + 1000);
    // The narinfo itself is not touched by a NAR access.
    expect((await narInfos.find(n.hash))!.lastAccessedAt).toBe(t0);
  });

  it('touches only the given rows', async () => {
    const a = newNarInfo('ta');
    const b = newNarInfo('tb');
    await narInfos.save(a, t0);
    await narInfos.save(b, t0);
    await narInfos.touch(a.hash, a.narKey, t0 + 10 * TOUCH_GRANULARITY_MS);
    expect((await narInfos.find(b.hash))!.lastAccessedAt).toBe(t0);
    expect((await files.find(b.narKey))!.lastAccessedAt).toBe(t0);
  });
});

describe('NarFileRepository accounting', () => {
  it('storedBytes is 0 for an empty database', async () => {
    expect(await files.storedBytes()).toBe(0);
  });

  it('storedBytes sums only stored rows, as a number', async () => {
    const a = newNarInfo('sa');
    const b = newNarInfo('sb');
    const c = newNarInfo('sc');
    for (const n of [a, b, c]) await narInfos.save(n);
    expect(await files.storedBytes()).toBe(0);
    await files.markStored(a.narKey, 4_000_000_000);
    await files.markStored(b.narKey, 1_500_000_000);
    const total = await files.storedBytes();
    expect(typeof total).toBe('number');
    expect(total).toBe(5_500_000_000);
    await files.markMissing(a.narKey);
    expect(await files.storedBytes()).toBe(1_500_000_000);
    expect((await files.find(a.narKey))!.storedSize).toBeNull();
  });

  it('markStored sets the size and the access time', async () => {
    const n = newNarInfo('ms');
    await narInfos.save(n, 1000);
    await files.markStored(n.narKey, 321, 5000);
    expect(await files.find(n.narKey)).toMatchObject({
      storedSize: 321,
      lastAccessedAt: 5000,
      createdAt: 1000,
    });
  });

  it('lruCandidates lists stored files least recently used first, ties by key, up to the limit', async () => {
    const names = ['l1', 'l2', 'l3', 'l4', 'l5', 'l6'];
    const times = [500, 100, 300, 100, 200, 50];
    const ns = names.map((name) => newNarInfo(name));
    for (const n of ns) await narInfos.save(n, 1);
    for (const [i, n] of ns.entries()) {
      if (i === 5) continue; // l6 is the oldest, but not stored
      await files.markStored(n.narKey, 10 + i, times[i]);
    }
    const expected = ns
      .map((n, i) => ({ key: n.narKey, t: times[i], stored: i !== 5 }))
      .filter((x) => x.stored)
      .sort((x, y) => x.t - y.t || (x.key < y.key ? -1 : x.key > y.key ? 1 : 0))
      .map((x) => x.key);

    const all = await files.lruCandidates(100);
    expect(all.map((f) => f.key)).toEqual(expected);
    expect(all.every((f) => f.storedSize !== null)).toBe(true);
    expect((await files.lruCandidates(2)).map((f) => f.key)).toEqual(expected.slice(0, 2));
  });

  it('lruCandidates orders large timestamps numerically', async () => {
    const a = newNarInfo('big-a');
    const b = newNarInfo('big-b');
    await narInfos.save(a, 1);
    await narInfos.save(b, 1);
    await files.markStored(a.narKey, 1, 10_000_000_000_000);
    await files.markStored(b.narKey, 1, 9_000_000_000_000);
    expect((await files.lruCandidates(10)).map((f) => f.key)).toEqual([b.narKey, a.narKey]);
  });
});

describe('NarFileRepository.deleteWithNarInfos', () => {
  it('removes the NAR file row, every narinfo pointing at it and their children, and nothing else', async () => {
    const shared = narKeyOf('shared');
    const a = newNarInfo('da', {
      narKey: shared,
      refs: [`${hashPart('r1')}-r1`, `${hashPart('r2')}-r2`],
      sigs: [sig('k', 1)],
    });
    const b = newNarInfo('db', {
      narKey: shared,
      refs: [`${hashPart('r3')}-r3`],
      sigs: [sig('k', 2), sig('j', 3)],
    });
    const keep = newNarInfo('keep', { refs: [`${hashPart('r4')}-r4`], sigs: [sig('k', 4)] });
    for (const n of [a, b, keep]) await narInfos.save(n);
    await files.markStored(shared, 100);
    await files.markStored(keep.narKey, 50);

    await files.deleteWithNarInfos(shared);

    expect(await files.find(shared)).toBeNull();
    expect(await narInfos.find(a.hash)).toBeNull();
    expect(await narInfos.find(b.hash)).toBeNull();
    expect(await count('narinfo_references', 'narinfo_hash IN (?, ?)', [a.hash, b.hash])).toBe(0);
    expect(await count('narinfo_signatures', 'narinfo_hash IN (?, ?)', [a.hash, b.hash])).toBe(0);

    const kept = await narInfos.find(keep.hash);
    expect(kept!.references.map((r) => r.reference)).toEqual([`${hashPart('r4')}-r4`]);
    expect(kept!.signatures.map((s) => s.signature)).toEqual([sig('k', 4)]);
    expect(await files.find(keep.narKey)).not.toBeNull();
    expect(await files.storedBytes()).toBe(50);
    expect(await count('narinfo_references')).toBe(1);
    expect(await count('narinfo_signatures')).toBe(1);
  });

  it('is a no-op for an unknown key', async () => {
    const n = newNarInfo('untouched');
    await narInfos.save(n);
    await files.deleteWithNarInfos(narKeyOf('unknown'));
    expect(await narInfos.find(n.hash)).not.toBeNull();
    expect(await count('nar_files')).toBe(1);
  });
});

describe('NarFileRepository.recordStored', () => {
  it('records a NAR fetched without a narinfo as stored', async () => {
    const key = narKeyOf('orphan');
    const fileHash = `sha256:${key.slice(0, 52)}`;
    await files.recordStored(
      key,
      `https://up.example/nar/${key}`,
      { compression: 'xz', fileHash },
      4242,
      7000,
    );
    expect(await files.find(key)).toMatchObject({
      key,
      upstreamUrl: `https://up.example/nar/${key}`,
      compression: 'xz',
      fileHash,
      fileSize: 4242,
      narHash: '',
      narSize: 0,
      storedSize: 4242,
      createdAt: 7000,
      lastAccessedAt: 7000,
    });
    expect(await files.storedBytes()).toBe(4242);
    expect((await files.lruCandidates(10)).map((f) => f.key)).toEqual([key]);
  });

  it('without a FileHash stores null', async () => {
    const key = narKeyOf('nohash');
    await files.recordStored(key, 'https://up.example/x', { compression: 'zstd' }, 10, 1);
    expect((await files.find(key))!.fileHash).toBeNull();
  });

  it('on an existing row keeps what the narinfo said and marks it stored', async () => {
    const n = newNarInfo('known');
    await narInfos.save(n, 1000);
    await files.recordStored(
      n.narKey,
      'https://elsewhere.example/x',
      { compression: 'zstd' },
      777,
      3000,
    );
    const f = await files.find(n.narKey);
    expect(f).toMatchObject({
      upstreamUrl: n.narUpstreamUrl,
      compression: 'xz',
      narHash: n.narInfo.narHash,
      narSize: 5678,
      storedSize: 777,
      createdAt: 1000,
      lastAccessedAt: 3000,
    });
    expect(await count('nar_files')).toBe(1);
  });
});
