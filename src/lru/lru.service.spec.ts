import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SchedulerRegistry } from '@nestjs/schedule';
import type { DataSource } from 'typeorm';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { AppConfig } from '../config/app-config';
import { openDataSource } from '../database/data-source';
import { NarFileRepository } from '../database/nar-file.repository';
import { NarInfoRepository } from '../database/narinfo.repository';
import { LocalLocker } from '../locking/local/local-locker';
import { LocalNotices } from '../locking/notices';
import { RememberedNars } from '../nar/stored-nar-memory';
import { makeInstance } from '../instances/instance';
import { InstanceLiveness } from '../instances/instance-liveness';
import { TakeoverLocks } from '../instances/takeover-locks';
import { MetricsService } from '../metrics/metrics.service';
import { encodeNix32 } from '../nix/base32';
import type { NarInfo } from '../nix/narinfo';
import { FilesystemNarStore } from '../storage/filesystem/filesystem-nar-store';
import { PinRepository } from '../database/pin.repository';
import { LruService } from './lru.service';

function hashPart(seed: string): string {
  return encodeNix32(createHash('sha256').update(`part:${seed}`).digest().subarray(0, 20));
}

function narKeyOf(seed: string): string {
  return `${encodeNix32(createHash('sha256').update(`file:${seed}`).digest())}.nar.xz`;
}

let dir: string;
let ds: DataSource;
let narInfos: NarInfoRepository;
let files: NarFileRepository;
let store: FilesystemNarStore;
let locker: LocalLocker;
let scheduler: SchedulerRegistry;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'narwhal-lru-'));
  ds = await openDataSource({ kind: 'sqlite', path: join(dir, 'narwhal.sqlite') });
  narInfos = new NarInfoRepository(ds);
  files = new NarFileRepository(ds);
  store = new FilesystemNarStore(join(dir, 'store'));
  await store.init();
  locker = new LocalLocker();
  scheduler = new SchedulerRegistry();
});

afterEach(async () => {
  for (const job of scheduler.getCronJobs().values()) await job.stop();
  await locker.close();
  if (ds?.isInitialized) await ds.destroy();
  await rm(dir, { recursive: true, force: true });
});

function lru(maxSize: number | undefined, schedule = '0 2 * * *'): LruService {
  const config = {
    lru: { maxSize, schedule },
    lock: { kind: 'local', lruTtlMs: 60_000 },
    upstreams: [],
    upstreamTimeouts: { connectMs: 1000 },
    metrics: { enabled: false },
  } as unknown as AppConfig;
  const metrics = new MetricsService(config);
  const self = makeInstance('http://lru-test.invalid:8501');
  const locks = new TakeoverLocks(
    config,
    locker,
    self,
    new InstanceLiveness(config, self),
    metrics,
  );
  const remembered = new RememberedNars(new LocalNotices());
  return new LruService(
    config,
    locks,
    store,
    files,
    new PinRepository(ds),
    scheduler,
    metrics,
    remembered,
  );
}

interface Cached {
  name: string;
  hash: string;
  narKey: string;
  size: number;
}

/**
 * A narinfo (with references and signatures) and its NAR file: saved in the database, the bytes
 * put in storage, and recorded as stored with `lastAccess` as its last access time.
 */
async function addCached(
  name: string,
  size: number,
  lastAccess: number,
  opts: { narKey?: string; refs?: number; references?: string[] } = {},
): Promise<Cached> {
  const hash = hashPart(name);
  const narKey = opts.narKey ?? narKeyOf(name);
  const narInfo: NarInfo = {
    storePath: `/nix/store/${hash}-${name}`,
    url: `nar/${narKey}`,
    compression: 'xz',
    fileHash: `sha256:${narKey.slice(0, 52)}`,
    fileSize: size,
    narHash: `sha256:${encodeNix32(createHash('sha256').update(name).digest())}`,
    narSize: size * 3,
    references:
      opts.references ??
      Array.from({ length: opts.refs ?? 2 }, (_, i) => `${hashPart(`${name}-ref${i}`)}-ref${i}`),
    sigs: [
      `up-1:${Buffer.alloc(64, size & 0xff).toString('base64')}`,
      `up-2:${Buffer.alloc(64, 7).toString('base64')}`,
    ],
  };
  await narInfos.save(
    {
      hash,
      narInfo,
      narKey,
      upstreamUrl: 'https://up.example',
      narUpstreamUrl: `https://up.example/nar/${narKey}`,
    },
    1,
  );
  if ((await store.stat(narKey)) === null) {
    const spool = join(store.spool.dir, `${name}.part`);
    await writeFile(spool, randomBytes(size));
    await store.putFile(narKey, spool);
  }
  await files.markStored(narKey, size, lastAccess);
  return { name, hash, narKey, size };
}

async function count(table: string, where = '1 = 1', params: unknown[] = []): Promise<number> {
  const rows = await ds.query<Array<{ n: number }>>(
    `SELECT COUNT(*) AS n FROM ${table} WHERE ${where}`,
    params,
  );
  return Number(rows[0].n);
}

/** Whether everything about `c` is present (true), absent (false), or half-there (throws). */
async function present(c: Cached): Promise<boolean> {
  const parts = {
    narinfo: (await narInfos.find(c.hash)) !== null,
    references: (await count('narinfo_references', 'narinfo_hash = ?', [c.hash])) > 0,
    signatures: (await count('narinfo_signatures', 'narinfo_hash = ?', [c.hash])) > 0,
    narFile: (await files.find(c.narKey)) !== null,
    object: (await store.stat(c.narKey)) !== null,
  };
  const values = Object.values(parts);
  if (values.every(Boolean)) return true;
  if (values.every((v) => !v)) return false;
  throw new Error(`${c.name} is half evicted: ${JSON.stringify(parts)}`);
}

async function storedKeys(): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of store.list()) keys.push(o.key);
  return keys.sort();
}

describe('LruService.run', () => {
  it('evicts least recently used first until the cache is under the limit', async () => {
    // Access order (oldest first): b, e, d, c, a — not the order of insertion, names or keys.
    const a = await addCached('a', 300, 50_000);
    const b = await addCached('b', 100, 10_000);
    const c = await addCached('c', 400, 40_000);
    const d = await addCached('d', 200, 30_000);
    const e = await addCached('e', 500, 20_000);
    expect(await files.storedBytes()).toBe(1500);

    const report = await lru(800).run();

    // b (100) → 1400, e (500) → 900, d (200) → 700 ≤ 800.
    expect(report).toEqual({
      ran: true,
      sizeBefore: 1500,
      sizeAfter: 700,
      evicted: 3,
      evictedBytes: 800,
      pinned: 0,
    });
    expect(await present(b)).toBe(false);
    expect(await present(e)).toBe(false);
    expect(await present(d)).toBe(false);
    expect(await present(c)).toBe(true);
    expect(await present(a)).toBe(true);
    expect(await files.storedBytes()).toBe(700);
    expect(await storedKeys()).toEqual([a.narKey, c.narKey].sort());
    expect(await count('narinfos')).toBe(2);
    expect(await count('narinfo_references')).toBe(4);
    expect(await count('narinfo_signatures')).toBe(4);
    expect(await count('nar_files')).toBe(2);
  });

  it('evicts nothing when the cache is under or at the limit', async () => {
    const items = [
      await addCached('u1', 100, 1),
      await addCached('u2', 200, 2),
      await addCached('u3', 300, 3),
    ];
    for (const limit of [10_000, 600]) {
      const report = await lru(limit).run();
      expect(report).toEqual({
        ran: true,
        sizeBefore: 600,
        sizeAfter: 600,
        evicted: 0,
        evictedBytes: 0,
        pinned: 0,
      });
    }
    for (const item of items) expect(await present(item)).toBe(true);
    expect(await storedKeys()).toHaveLength(3);
  });

  it('does nothing without a limit', async () => {
    const item = await addCached('nolimit', 100, 1);
    const report = await lru(undefined).run();
    expect(report).toEqual({
      ran: false,
      sizeBefore: 100,
      sizeAfter: 100,
      evicted: 0,
      evictedBytes: 0,
      pinned: 0,
    });
    expect(await present(item)).toBe(true);
  });

  it('takes the limit as an argument too', async () => {
    const old = await addCached('old', 100, 1);
    const recent = await addCached('recent', 100, 2);
    const report = await lru(undefined).run(150);
    expect(report.evicted).toBe(1);
    expect(await present(old)).toBe(false);
    expect(await present(recent)).toBe(true);
  });

  it('can evict everything', async () => {
    const items = [await addCached('x1', 10, 1), await addCached('x2', 20, 2)];
    const report = await lru(1).run();
    expect(report).toMatchObject({ ran: true, sizeAfter: 0, evicted: 2, evictedBytes: 30 });
    for (const item of items) expect(await present(item)).toBe(false);
    expect(await storedKeys()).toEqual([]);
    expect(await count('narinfo_references')).toBe(0);
    expect(await count('narinfo_signatures')).toBe(0);
  });

  it('removes every narinfo that shares an evicted NAR', async () => {
    const shared = narKeyOf('shared');
    const s1 = await addCached('s1', 300, 1, { narKey: shared });
    const s2 = await addCached('s2', 300, 1, { narKey: shared });
    const other = await addCached('other', 100, 5);
    expect(await files.storedBytes()).toBe(400);
    const report = await lru(200).run();
    expect(report).toMatchObject({ evicted: 1, evictedBytes: 300, sizeAfter: 100 });
    expect(await present(s1)).toBe(false);
    expect(await present(s2)).toBe(false);
    expect(await present(other)).toBe(true);
  });

  it('ignores NAR files that are known but not stored', async () => {
    const stored = await addCached('st', 100, 50);
    // A narinfo whose NAR was never downloaded: older, but holds no bytes.
    const hash = hashPart('pending');
    const narKey = narKeyOf('pending');
    await narInfos.save(
      {
        hash,
        narKey,
        upstreamUrl: 'https://up.example',
        narUpstreamUrl: `https://up.example/nar/${narKey}`,
        narInfo: {
          storePath: `/nix/store/${hash}-pending`,
          url: `nar/${narKey}`,
          compression: 'xz',
          narHash: `sha256:${encodeNix32(createHash('sha256').update('pending').digest())}`,
          narSize: 10,
          references: [],
          sigs: [],
        },
      },
      1,
    );
    const report = await lru(50).run();
    expect(report).toMatchObject({ sizeBefore: 100, evicted: 1, evictedBytes: 100, sizeAfter: 0 });
    expect(await present(stored)).toBe(false);
    expect(await narInfos.find(hash)).not.toBeNull();
    expect(await files.find(narKey)).not.toBeNull();
  });

  it('evicts across several batches when many small NARs are over the limit', async () => {
    const items: Cached[] = [];
    for (let i = 0; i < 230; i++) items.push(await addCached(`n${i}`, 10, 1000 + i, { refs: 0 }));
    const report = await lru(100).run();
    expect(report).toMatchObject({
      ran: true,
      sizeBefore: 2300,
      sizeAfter: 100,
      evicted: 220,
      evictedBytes: 2200,
    });
    // The ten most recently used remain.
    expect((await storedKeys()).sort()).toEqual(
      items
        .slice(-10)
        .map((c) => c.narKey)
        .sort(),
    );
  });

  it("never evicts a pinned path's closure, however old; unpinned, it goes", async () => {
    // top → mid → leaf and top → leaf, the oldest of all; three newer paths nobody pinned.
    const leaf = await addCached('leaf', 100, 1);
    const mid = await addCached('mid', 100, 2, { references: [`${leaf.hash}-leaf`] });
    const top = await addCached('top', 100, 3, {
      references: [`${mid.hash}-mid`, `${leaf.hash}-leaf`],
    });
    const others = [
      await addCached('o1', 100, 10),
      await addCached('o2', 100, 11),
      await addCached('o3', 100, 12),
    ];
    const pins = new PinRepository(ds);
    await pins.add({
      hash: top.hash,
      storePath: `/nix/store/${top.hash}-top`,
      createdAt: 1,
      createdBy: 'cli',
    });
    expect((await pins.closureOf([top.hash])).narKeys).toEqual(
      new Set([top.narKey, mid.narKey, leaf.narKey]),
    );

    const report = await lru(1).run();

    expect(report).toMatchObject({ evicted: 3, evictedBytes: 300, pinned: 3, sizeAfter: 300 });
    for (const c of [top, mid, leaf]) expect(await present(c)).toBe(true);
    for (const c of others) expect(await present(c)).toBe(false);
    expect(await pins.remove(top.hash)).toBe(true);
    expect(await lru(1).run()).toMatchObject({ evicted: 3, pinned: 0, sizeAfter: 0 });
    for (const c of [top, mid, leaf]) expect(await present(c)).toBe(false);
  });

  it('pages past more pinned NARs than one batch holds', async () => {
    const pins = new PinRepository(ds);
    const pinned: Cached[] = [];
    for (let i = 0; i < 210; i++) {
      const c = await addCached(`p${i}`, 10, 100 + i, { refs: 0 });
      await pins.add({
        hash: c.hash,
        storePath: `/nix/store/${c.hash}-p${i}`,
        createdAt: 1,
        createdBy: 'cli',
      });
      pinned.push(c);
    }
    const newer = [
      await addCached('n1', 10, 5000, { refs: 0 }),
      await addCached('n2', 10, 5001, { refs: 0 }),
    ];
    const report = await lru(1).run();
    expect(report).toMatchObject({ evicted: 2, pinned: 210, sizeAfter: 2100 });
    expect(await storedKeys()).toEqual(pinned.map((c) => c.narKey).sort());
    for (const c of newer) expect(await files.find(c.narKey)).toBeNull();
  });

  it('reports ran=false and evicts nothing while another run holds the lock', async () => {
    const item = await addCached('locked', 100, 1);
    const lease = await locker.tryAcquire('lru', 60_000);
    expect(lease).not.toBeNull();
    const report = await lru(10).run();
    expect(report).toEqual({
      ran: false,
      sizeBefore: 100,
      sizeAfter: 100,
      evicted: 0,
      evictedBytes: 0,
      pinned: 0,
    });
    expect(await present(item)).toBe(true);
    await lease!.release();
    expect((await lru(10).run()).ran).toBe(true);
    expect(await present(item)).toBe(false);
  });

  it('lets only one of two concurrent runs work', async () => {
    for (let i = 0; i < 5; i++) await addCached(`c${i}`, 100, i);
    const service = lru(250);
    const [first, second] = await Promise.all([service.run(), service.run()]);
    const reports = [first, second];
    expect(reports.filter((r) => r.ran)).toHaveLength(1);
    const worker = reports.find((r) => r.ran)!;
    const skipped = reports.find((r) => !r.ran)!;
    expect(worker).toMatchObject({ evicted: 3, evictedBytes: 300, sizeAfter: 200 });
    expect(skipped).toMatchObject({ evicted: 0, evictedBytes: 0 });
    expect(await files.storedBytes()).toBe(200);
    expect(await storedKeys()).toHaveLength(2);
  });

  it('releases the lock after a run, even a failing one', async () => {
    const item = await addCached('f1', 100, 1);
    // Make the object impossible to delete: a directory where its file should be.
    const path = store.pathOf(item.narKey);
    await rm(path);
    await mkdir(path);
    const service = lru(10);
    await expect(service.run()).rejects.toThrow();
    const lease = await locker.tryAcquire('lru', 1000);
    expect(lease).not.toBeNull();
    await lease!.release();
    expect(service.status().lastRun).toMatchObject({
      result: 'failed',
      sizeAfter: null,
      error: expect.any(String) as string,
    });
  });
});

describe('LruService.status (for the status page)', () => {
  it('shows the last run on this instance: evicted, freed, size after, or skipped', async () => {
    await addCached('s1', 300, 1);
    await addCached('s2', 300, 2);
    const service = lru(400);
    expect(service.status().lastRun).toBeNull();
    const before = Date.now();
    await service.run();
    const ran = service.status().lastRun;
    expect(ran).toMatchObject({ result: 'ran', evicted: 1, evictedBytes: 300, sizeAfter: 300 });
    expect(Date.parse(ran!.at)).toBeGreaterThanOrEqual(before - 1000);
    expect(ran!.durationMs).toBeGreaterThanOrEqual(0);

    const lease = await locker.tryAcquire('lru', 60_000);
    await service.run();
    expect(service.status().lastRun).toMatchObject({ result: 'skipped', evicted: 0 });
    await lease!.release();
  });

  it('gives the limit, the schedule and the next run once scheduled; nothing without a limit', () => {
    const service = lru(1000, '0 0 3 * * *');
    expect(service.status().nextRunAt).toBeNull(); // not scheduled before onModuleInit
    service.onModuleInit();
    const status = service.status();
    expect(status).toMatchObject({ maxBytes: 1000, schedule: '0 0 3 * * *', lastRun: null });
    const next = new Date(status.nextRunAt!);
    expect(next.getTime()).toBeGreaterThan(Date.now());
    expect([next.getHours(), next.getMinutes(), next.getSeconds()]).toEqual([3, 0, 0]);

    const unlimited = lru(undefined);
    unlimited.onModuleInit();
    expect(unlimited.status()).toMatchObject({ maxBytes: null, nextRunAt: null, lastRun: null });
  });
});

describe('LruService schedule', () => {
  it('registers a cron job with the configured schedule when a limit is set', () => {
    lru(1000, '0 */10 * * * *').onModuleInit();
    const job = scheduler.getCronJob('lru');
    expect(job.cronTime.source).toBe('0 */10 * * * *');
    expect(job.isActive).toBe(true);
  });

  it('registers nothing without a limit', () => {
    lru(undefined).onModuleInit();
    expect(scheduler.doesExist('cron', 'lru')).toBe(false);
  });
});
