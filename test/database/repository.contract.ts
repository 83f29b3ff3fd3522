import {
  In,
  type DataSource,
  type EntityTarget,
  type FindOptionsWhere,
  type ObjectLiteral,
} from 'typeorm';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  NarFileEntity,
  NarInfoEntity,
  NarInfoReferenceEntity,
  NarInfoSignatureEntity,
} from '../../src/database/entities';
import { AccessTokenRepository } from '../../src/database/access-token.repository';
import { NarFileRepository } from '../../src/database/nar-file.repository';
import { PinRepository } from '../../src/database/pin.repository';
import {
  NarInfoRepository,
  TOUCH_GRANULARITY_MS,
  type NewNarInfo,
} from '../../src/database/narinfo.repository';
import { encodeNix32 } from '../../src/nix/base32';
import type { NarInfo } from '../../src/nix/narinfo';
import { nixSha256, sha256, sha256Nix32 } from '../support/hash';

export interface DatabaseUnderTest {
  /** An open, migrated DataSource on an empty database of its own. */
  ds: DataSource;
  /** Closes `ds` and opens the same database again through `openDataSource` (migrations run again). */
  reopen(): Promise<DataSource>;
  /** Closes whatever DataSource is open and removes the database. */
  cleanup(): Promise<void>;
}

const GiB = 1024 ** 3;
const TABLES = ['nar_files', 'narinfos', 'narinfo_references', 'narinfo_signatures'];

/** A 32-character store path hash part derived from `seed`. */
function hashPart(seed: string): string {
  return encodeNix32(sha256(`part:${seed}`).subarray(0, 20));
}

function narKeyOf(seed: string): string {
  return `${sha256Nix32(`file:${seed}`)}.nar.xz`;
}

/** A store path base name `<hash>-<name>`. */
function baseName(name: string): string {
  return `${hashPart(name)}-${name}`;
}

/** A valid store path name (every character Nix allows in one) exactly `length` characters long. */
function longName(seed: string, length: number): string {
  return `${seed}-`.concat('python3.12-Foo_Bar+baz?v=1.0-'.repeat(10)).slice(0, length);
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
    narHash: nixSha256(`nar:${name}`),
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

function byCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * What narwhal needs from its repositories, whatever database is behind them. Each test gets a fresh,
 * migrated database from `open`; the cases use only the repositories and entities (no dialect SQL),
 * so the same file runs unchanged against SQLite, PostgreSQL and MariaDB.
 */
export function repositoryContract(dialect: string, open: () => Promise<DatabaseUnderTest>): void {
  describe(`repository contract: ${dialect}`, () => {
    let db: DatabaseUnderTest;
    let ds: DataSource;
    let narInfos: NarInfoRepository;
    let files: NarFileRepository;

    beforeEach(async () => {
      db = await open();
      ds = db.ds;
      narInfos = new NarInfoRepository(ds);
      files = new NarFileRepository(ds);
    });

    afterEach(async () => {
      await db?.cleanup();
    });

    function count<T extends ObjectLiteral>(
      entity: EntityTarget<T>,
      where: FindOptionsWhere<T> = {},
    ): Promise<number> {
      return ds.getRepository(entity).countBy(where);
    }

    describe('openDataSource', () => {
      it('creates the schema on a fresh database and can open it again', async () => {
        const qr = ds.createQueryRunner();
        try {
          for (const table of TABLES) expect(await qr.hasTable(table), table).toBe(true);
        } finally {
          await qr.release();
        }
        await narInfos.save(newNarInfo('persisted', { refs: [baseName('r')] }));
        ds = await db.reopen();
        const row = await new NarInfoRepository(ds).find(hashPart('persisted'));
        expect(row?.references.map((r) => r.reference)).toEqual([baseName('r')]);
      });

      it('enforces foreign keys: children of an unknown narinfo are refused', async () => {
        await expect(
          ds.getRepository(NarInfoReferenceEntity).insert({
            narInfoHash: hashPart('nobody'),
            position: 0,
            reference: baseName('r'),
          }),
        ).rejects.toThrow();
        await expect(
          ds.getRepository(NarInfoSignatureEntity).insert({
            narInfoHash: hashPart('nobody'),
            position: 0,
            signature: sig('k', 1),
          }),
        ).rejects.toThrow();
        expect(await count(NarInfoReferenceEntity)).toBe(0);
        expect(await count(NarInfoSignatureEntity)).toBe(0);
      });

      it('cascades a narinfo delete to its references and signatures in the database', async () => {
        const n = newNarInfo('cascade', {
          refs: [baseName('a'), baseName('b')],
          sigs: [sig('k', 1)],
        });
        await narInfos.save(n);
        // A plain DELETE, no ORM cascade: the foreign keys must do it.
        await ds
          .createQueryBuilder()
          .delete()
          .from(NarInfoEntity)
          .where({ hash: n.hash })
          .execute();
        expect(await count(NarInfoReferenceEntity)).toBe(0);
        expect(await count(NarInfoSignatureEntity)).toBe(0);
      });
    });

    describe('NarInfoRepository.save / find', () => {
      it('round-trips every field, with references and signatures in their original order', async () => {
        // Deliberately not sorted, so that order by value and order by position differ.
        const refs = [baseName('zeta'), baseName('alpha'), baseName('mid'), baseName('self')];
        const sigs = [sig('z-key-1', 1), sig('a-key-1', 2), sig('m-key-1', 3)];
        const n = newNarInfo('self', {
          refs,
          sigs,
          fileSize: 5_000_000_000,
          narSize: 9_000_000_000,
        });
        n.narInfo.ca = 'fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s';
        const written = await narInfos.save(n, 1_700_000_000_000);

        const row = await narInfos.find(n.hash);
        expect(row).not.toBeNull();
        // What save resolves is what find reads back (the narinfo flow serves it without reading).
        expect({ ...written }).toEqual({ ...row });
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

      it('round-trips long store paths, references, Deriver and CA verbatim', async () => {
        const name = longName('long', 200);
        const refs = Array.from({ length: 12 }, (_, i) => baseName(longName(`ref${11 - i}`, 200)));
        const sigs = [
          sig('cache.nixos.org-1', 1),
          sig('a-much-longer-key-name.example.org-2024', 2),
          sig('k', 3),
        ];
        const n = newNarInfo(name, { refs, sigs, fileSize: 5 * GiB, narSize: 7 * GiB + 3 });
        n.narInfo.deriver = baseName(`${longName('drv', 196)}.drv`);
        n.narInfo.ca = `fixed:r:${nixSha256('ca')}`;
        n.narInfo.system = 'aarch64-darwin';
        await narInfos.save(n, 1_800_000_000_123);

        expect(n.narInfo.storePath.length).toBeGreaterThan(240);
        expect(refs[0].length).toBe(233);
        const row = await narInfos.find(n.hash);
        expect(row).toMatchObject({
          storePath: n.narInfo.storePath,
          deriver: n.narInfo.deriver,
          ca: n.narInfo.ca,
          system: 'aarch64-darwin',
          fileSize: 5 * GiB,
          narSize: 7 * GiB + 3,
          createdAt: 1_800_000_000_123,
        });
        expect(row!.references.map((r) => r.reference)).toEqual(refs);
        expect(row!.references.map((r) => r.position)).toEqual(refs.map((_, i) => i));
        expect(row!.signatures.map((s) => s.signature)).toEqual(sigs);
        expect(row!.signatures.map((s) => s.position)).toEqual([0, 1, 2]);
      });

      it('keeps order for many references (more than ten, so text order of positions would differ)', async () => {
        const refs = Array.from({ length: 25 }, (_, i) => baseName(`r${24 - i}`));
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
          refs: [baseName('a'), baseName('b'), baseName('c')],
          sigs: [sig('k1', 1), sig('k2', 2)],
        });
        await narInfos.save(first, 1000);
        const second = newNarInfo('twice', { refs: [baseName('d')], sigs: [sig('k3', 3)] });
        second.upstreamUrl = 'https://other.example.org';
        await narInfos.save(second, 2000);

        const row = await narInfos.find(second.hash);
        expect(row!.references.map((r) => r.reference)).toEqual([baseName('d')]);
        expect(row!.signatures.map((s) => s.signature)).toEqual([sig('k3', 3)]);
        expect(row!.upstreamUrl).toBe('https://other.example.org');
        expect(row!.createdAt).toBe(2000);
        expect(await count(NarInfoEntity)).toBe(1);
        expect(await count(NarInfoReferenceEntity)).toBe(1);
        expect(await count(NarInfoSignatureEntity)).toBe(1);
        expect(await count(NarFileEntity)).toBe(1);
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
        const a = newNarInfo('a', { refs: [baseName('x')], sigs: [sig('k', 1)] });
        const b = newNarInfo('b', { refs: [baseName('y'), baseName('z')], sigs: [sig('k', 2)] });
        await narInfos.save(a);
        await narInfos.save(b);
        await narInfos.save(a);
        expect((await narInfos.find(b.hash))!.references.map((r) => r.reference)).toEqual([
          baseName('y'),
          baseName('z'),
        ]);
        expect(await count(NarInfoReferenceEntity)).toBe(3);
      });

      it('is all or nothing: a failing save leaves no partial rows', async () => {
        const n = newNarInfo('atomic', { refs: [baseName('a')] });
        // A reference that cannot be stored (NOT NULL) makes the transaction fail after the narinfo insert.
        (n.narInfo.references as Array<string | null>).push(null);
        await expect(narInfos.save(n)).rejects.toThrow();
        expect(await count(NarInfoEntity)).toBe(0);
        expect(await count(NarInfoReferenceEntity)).toBe(0);
        expect(await count(NarFileEntity)).toBe(0);
      });

      it('a failing save of a known hash keeps the previous narinfo whole', async () => {
        const before = newNarInfo('kept', {
          refs: [baseName('a'), baseName('b')],
          sigs: [sig('k', 1)],
        });
        await narInfos.save(before, 1000);
        const broken = newNarInfo('kept', { refs: [baseName('c')] });
        (broken.narInfo.references as Array<string | null>).push(null);
        await expect(narInfos.save(broken, 2000)).rejects.toThrow();
        const row = await narInfos.find(before.hash);
        expect(row!.createdAt).toBe(1000);
        expect(row!.references.map((r) => r.reference)).toEqual([baseName('a'), baseName('b')]);
        expect(row!.signatures.map((s) => s.signature)).toEqual([sig('k', 1)]);
      });

      it('setOwnSignature stores narwhal’s signature', async () => {
        const n = newNarInfo('signed');
        await narInfos.save(n);
        await narInfos.setOwnSignature(n.hash, sig('narwhal-1', 9));
        expect((await narInfos.find(n.hash))!.ownSignature).toBe(sig('narwhal-1', 9));
      });
    });

    describe('concurrent saves (two instances racing for one narinfo)', () => {
      /** Save `i` of the same hash: every field that may differ between racers carries `i`. */
      function racer(i: number, narKey: string): NewNarInfo {
        const n = newNarInfo('raced', {
          refs: Array.from({ length: i + 1 }, (_, j) => baseName(`racer${i}-ref${j}`)),
          sigs: Array.from({ length: 10 - i }, (_, j) => sig(`racer${i}-key${j}`, j)),
          narKey,
        });
        n.upstreamUrl = `https://upstream-${i}.example.org`;
        n.narUpstreamUrl = `https://upstream-${i}.example.org/nar/${n.narKey}`;
        n.narInfo.system = `system-${i}`;
        return n;
      }

      for (const sameNar of [true, false]) {
        it(`10 parallel saves of the same hash (${sameNar ? 'one NAR' : 'a NAR each'}) end with one whole narinfo from one of them`, async () => {
          const racers = Array.from({ length: 10 }, (_, i) =>
            racer(i, narKeyOf(sameNar ? 'raced' : `raced${i}`)),
          );
          const results = await Promise.allSettled(
            racers.map((n, i) => narInfos.save(n, 1000 + i)),
          );

          // First the end state, whatever the saves answered: one narinfo, its children all from the
          // same save (none mixed in from another, none left over), and its NAR file row.
          expect(await count(NarInfoEntity)).toBe(1);
          const row = (await narInfos.find(racers[0].hash))!;
          const winner = racers.findIndex((n) => n.upstreamUrl === row.upstreamUrl);
          expect(winner).toBeGreaterThanOrEqual(0);
          const w = racers[winner];
          expect(row.system).toBe(w.narInfo.system);
          expect(row.narKey).toBe(w.narKey);
          expect(row.createdAt).toBe(1000 + winner);
          expect(row.references.map((r) => r.reference)).toEqual(w.narInfo.references);
          expect(row.references.map((r) => r.position)).toEqual(
            w.narInfo.references.map((_, j) => j),
          );
          expect(row.signatures.map((s) => s.signature)).toEqual(w.narInfo.sigs);
          expect(await count(NarInfoReferenceEntity)).toBe(w.narInfo.references.length);
          expect(await count(NarInfoSignatureEntity)).toBe(w.narInfo.sigs.length);
          if (sameNar) {
            expect(await count(NarFileEntity)).toBe(1);
            const file = (await files.find(w.narKey))!;
            expect(racers.map((n) => n.narUpstreamUrl)).toContain(file.upstreamUrl);
          } else {
            expect((await files.find(w.narKey))!.upstreamUrl).toBe(w.narUpstreamUrl);
          }

          // Then the answers: losing a race is not the caller's problem. Every save must succeed,
          // or a second narwhal instance fetching the same path turns a cache miss into a 500.
          const failures = results.flatMap((r, i) =>
            r.status === 'rejected' ? [`save ${i}: ${String(r.reason)}`] : [],
          );
          expect(failures).toEqual([]);
        });
      }

      it('a failing save does not take a concurrent save down with it', async () => {
        const good = newNarInfo('good', {
          refs: [baseName('g1'), baseName('g2'), baseName('g3')],
          sigs: [sig('k', 1), sig('k', 2)],
        });
        const broken = newNarInfo('broken', { refs: [baseName('b1')] });
        (broken.narInfo.references as Array<string | null>).push(null);
        const [g, b] = await Promise.allSettled([narInfos.save(good), narInfos.save(broken)]);
        expect(b.status).toBe('rejected');
        expect(await narInfos.find(broken.hash)).toBeNull();
        expect(await files.find(broken.narKey)).toBeNull();
        const row = await narInfos.find(good.hash);
        expect(row?.references.map((r) => r.reference)).toEqual(good.narInfo.references);
        expect(row?.signatures.map((s) => s.signature)).toEqual(good.narInfo.sigs);
        expect(await files.find(good.narKey)).not.toBeNull();
        expect(g.status === 'rejected' ? String(g.reason) : 'fulfilled').toBe('fulfilled');
      });

      it('parallel saves of different narinfos, some sharing a NAR, all succeed', async () => {
        const ns = Array.from({ length: 10 }, (_, i) =>
          newNarInfo(`parallel${i}`, {
            refs: [baseName(`p${i}-a`), baseName(`p${i}-b`)],
            sigs: [sig(`k${i}`, i)],
            narKey: narKeyOf(`shared${i % 5}`),
          }),
        );
        const results = await Promise.allSettled(ns.map((n) => narInfos.save(n)));
        expect(results.flatMap((r) => (r.status === 'rejected' ? [String(r.reason)] : []))).toEqual(
          [],
        );
        for (const n of ns) {
          const row = await narInfos.find(n.hash);
          expect(row!.references.map((r) => r.reference)).toEqual(n.narInfo.references);
          expect(row!.signatures.map((s) => s.signature)).toEqual(n.narInfo.sigs);
        }
        expect(await count(NarInfoEntity)).toBe(10);
        expect(await count(NarInfoReferenceEntity)).toBe(20);
        expect(await count(NarFileEntity)).toBe(5);
      });

      it('parallel recordStored of the same NAR leaves one stored row', async () => {
        const key = narKeyOf('raced-orphan');
        const results = await Promise.allSettled(
          Array.from({ length: 10 }, (_, i) =>
            files.recordStored(
              key,
              `https://up${i}.example/nar/${key}`,
              { compression: 'xz' },
              4242,
              100 + i,
            ),
          ),
        );
        expect(results.flatMap((r) => (r.status === 'rejected' ? [String(r.reason)] : []))).toEqual(
          [],
        );
        expect(await count(NarFileEntity)).toBe(1);
        expect((await files.find(key))!.storedSize).toBe(4242);
        expect(await files.storedBytes()).toBe(4242);
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
        expect((await files.find(n.narKey))!.lastAccessedAt).toBe(t0);
      });

      it('NarFileRepository.touch writes only when the last access is older than the granularity', async () => {
        const n = newNarInfo('file-touched');
        await narInfos.save(n, t0);
        await files.touch(n.narKey, t0 + 1000);
        expect((await files.find(n.narKey))!.lastAccessedAt).toBe(t0);
        await files.touch(n.narKey, t0 + TOUCH_GRANULARITY_MS);
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

      it('storedBytes adds up rows of 5 GiB each, beyond 32 bits per row and in the sum', async () => {
        const ns = Array.from({ length: 6 }, (_, i) => newNarInfo(`huge${i}`));
        for (const n of ns) await narInfos.save(n);
        for (const [i, n] of ns.entries()) await files.markStored(n.narKey, 5 * GiB + i);
        expect(await files.storedBytes()).toBe(30 * GiB + 15);
        expect((await files.find(ns[5].narKey))!.storedSize).toBe(5 * GiB + 5);
        const candidates = await files.lruCandidates(10);
        expect(candidates.map((f) => typeof f.storedSize)).toEqual(ns.map(() => 'number'));
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

      it('markMissing forgets the stored copy, keeps the row, and ignores unknown keys', async () => {
        const n = newNarInfo('gone');
        await narInfos.save(n, 1000);
        await files.markStored(n.narKey, 5 * GiB, 2000);
        await files.markMissing(n.narKey);
        await files.markMissing(narKeyOf('never-seen'));
        expect(await files.find(n.narKey)).toMatchObject({
          storedSize: null,
          narHash: n.narInfo.narHash,
          lastAccessedAt: 2000,
        });
        expect(await files.storedBytes()).toBe(0);
        expect(await files.lruCandidates(10)).toEqual([]);
        expect(await narInfos.find(n.hash)).not.toBeNull();
        expect(await count(NarFileEntity)).toBe(1);
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
          .sort((x, y) => x.t - y.t || byCodeUnits(x.key, y.key))
          .map((x) => x.key);

        const all = await files.lruCandidates(100);
        expect(all.map((f) => f.key)).toEqual(expected);
        expect(all.every((f) => f.storedSize !== null)).toBe(true);
        expect((await files.lruCandidates(2)).map((f) => f.key)).toEqual(expected.slice(0, 2));
      });

      it('lruCandidates breaks a tie of many rows by key, in byte order', async () => {
        const ns = Array.from({ length: 12 }, (_, i) => newNarInfo(`tie${i}`));
        for (const n of ns) await narInfos.save(n, 1);
        for (const n of ns) await files.markStored(n.narKey, 1, 7777);
        const expected = ns.map((n) => n.narKey).sort(byCodeUnits);
        expect((await files.lruCandidates(100)).map((f) => f.key)).toEqual(expected);
        expect((await files.lruCandidates(5)).map((f) => f.key)).toEqual(expected.slice(0, 5));
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

      it('lruCandidates pages on after the last one seen, through ties', async () => {
        const ns = Array.from({ length: 7 }, (_, i) => newNarInfo(`page${i}`));
        for (const n of ns) await narInfos.save(n, 1);
        for (const [i, n] of ns.entries())
          await files.markStored(n.narKey, 1, i < 4 ? 100 : 200 + i);
        const all = (await files.lruCandidates(100)).map((f) => f.key);
        const seen: string[] = [];
        let after: NarFileEntity | undefined;
        for (;;) {
          const page = await files.lruCandidates(3, after);
          if (page.length === 0) break;
          seen.push(...page.map((f) => f.key));
          after = page[page.length - 1];
        }
        expect(seen).toEqual(all);
        expect(all).toHaveLength(7);
      });
    });

    describe('uploads, deletes, pins and tokens', () => {
      it('deleteWithUnsharedNar removes the NAR row only when no other narinfo points at it', async () => {
        const shared = narKeyOf('shared-del');
        const a = newNarInfo('del-a', {
          narKey: shared,
          refs: [baseName('x')],
          sigs: [sig('k', 1)],
        });
        const b = newNarInfo('del-b', { narKey: shared });
        for (const n of [a, b]) await narInfos.save(n);
        expect((await narInfos.hashesOf(shared)).sort()).toEqual([a.hash, b.hash].sort());
        expect(await narInfos.deleteWithUnsharedNar(a.hash)).toEqual({
          narKey: shared,
          narRowDeleted: false,
        });
        expect(await narInfos.find(a.hash)).toBeNull();
        expect(await count(NarInfoReferenceEntity, { narInfoHash: a.hash })).toBe(0);
        expect(await files.find(shared)).not.toBeNull();
        expect(await narInfos.deleteWithUnsharedNar(b.hash)).toEqual({
          narKey: shared,
          narRowDeleted: true,
        });
        expect(await files.find(shared)).toBeNull();
        expect(await narInfos.deleteWithUnsharedNar(b.hash)).toBeNull();
      });

      it('setNarHash records what a narinfo vouches for, and the compression when given', async () => {
        const key = narKeyOf('pushed');
        await files.recordStored(key, 'upload:ci', { compression: 'none' }, 10, 1);
        await files.setNarHash(key, nixSha256('pushed'), 99, 'gzip');
        expect(await files.find(key)).toMatchObject({
          narHash: nixSha256('pushed'),
          narSize: 99,
          compression: 'gzip',
        });
      });

      it("a pin's closure follows References through stored narinfos, and counts stored bytes", async () => {
        const leaf = newNarInfo('c-leaf', { refs: [baseName('c-elsewhere')] });
        const mid = newNarInfo('c-mid', { refs: [baseName('c-leaf'), baseName('c-mid')] });
        const top = newNarInfo('c-top', { refs: [baseName('c-mid'), baseName('c-leaf')] });
        const other = newNarInfo('c-other');
        for (const n of [leaf, mid, top, other]) await narInfos.save(n);
        for (const n of [leaf, mid, top]) await files.markStored(n.narKey, 3 * GiB);
        const pins = new PinRepository(ds);
        await pins.add({
          hash: top.hash,
          storePath: top.narInfo.storePath,
          createdAt: 5,
          createdBy: 'ci',
        });
        await pins.add({ hash: top.hash, storePath: 'again', createdAt: 6, createdBy: 'cli' });
        expect(await pins.list()).toEqual([
          { hash: top.hash, storePath: top.narInfo.storePath, createdAt: 5, createdBy: 'ci' },
        ]);
        const closure = await pins.pinnedClosure();
        expect(closure.hashes).toEqual(new Set([top.hash, mid.hash, leaf.hash]));
        expect(closure.narKeys).toEqual(new Set([top.narKey, mid.narKey, leaf.narKey]));
        expect(await files.storedBytesOf(closure.narKeys)).toBe(9 * GiB);
        expect(await pins.remove(top.hash)).toBe(true);
        expect(await pins.remove(top.hash)).toBe(false);
        expect((await pins.pinnedClosure()).narKeys.size).toBe(0);
      });

      it('tokens: unique names, found by hash, revoked by name, last use recorded', async () => {
        const tokens = new AccessTokenRepository(ds);
        const row = {
          name: 'ci',
          tokenHash: 'a'.repeat(64),
          permissions: 'read,write',
          createdAt: 1,
          expiresAt: 10_000_000_000_000,
        };
        expect(await tokens.create(row)).toBe(true);
        expect(await tokens.create({ ...row, tokenHash: 'b'.repeat(64) })).toBe(false);
        expect(await tokens.findByHash('a'.repeat(64))).toMatchObject({ ...row, lastUsedAt: null });
        expect(await tokens.findByHash('b'.repeat(64))).toBeNull();
        await tokens.touch('ci', 12_345);
        expect((await tokens.findByName('ci'))?.lastUsedAt).toBe(12_345);
        expect((await tokens.list()).map((t) => t.name)).toEqual(['ci']);
        expect(await tokens.revoke('ci')).toBe(true);
        expect(await tokens.revoke('ci')).toBe(false);
        expect(await tokens.findByHash('a'.repeat(64))).toBeNull();
      });
    });

    describe('NarFileRepository.deleteWithNarInfos', () => {
      it('removes the NAR file row, every narinfo pointing at it and their children, and nothing else', async () => {
        const shared = narKeyOf('shared');
        const a = newNarInfo('da', {
          narKey: shared,
          refs: [baseName('r1'), baseName('r2')],
          sigs: [sig('k', 1)],
        });
        const b = newNarInfo('db', {
          narKey: shared,
          refs: [baseName('r3')],
          sigs: [sig('k', 2), sig('j', 3)],
        });
        const keep = newNarInfo('keep', { refs: [baseName('r4')], sigs: [sig('k', 4)] });
        for (const n of [a, b, keep]) await narInfos.save(n);
        await files.markStored(shared, 100);
        await files.markStored(keep.narKey, 50);

        await files.deleteWithNarInfos(shared);

        expect(await files.find(shared)).toBeNull();
        expect(await narInfos.find(a.hash)).toBeNull();
        expect(await narInfos.find(b.hash)).toBeNull();
        const gone = { narInfoHash: In([a.hash, b.hash]) };
        expect(await count(NarInfoReferenceEntity, gone)).toBe(0);
        expect(await count(NarInfoSignatureEntity, gone)).toBe(0);

        const kept = await narInfos.find(keep.hash);
        expect(kept!.references.map((r) => r.reference)).toEqual([baseName('r4')]);
        expect(kept!.signatures.map((s) => s.signature)).toEqual([sig('k', 4)]);
        expect(await files.find(keep.narKey)).not.toBeNull();
        expect(await files.storedBytes()).toBe(50);
        expect(await count(NarInfoReferenceEntity)).toBe(1);
        expect(await count(NarInfoSignatureEntity)).toBe(1);
      });

      it('is a no-op for an unknown key', async () => {
        const n = newNarInfo('untouched');
        await narInfos.save(n);
        await files.deleteWithNarInfos(narKeyOf('unknown'));
        expect(await narInfos.find(n.hash)).not.toBeNull();
        expect(await count(NarFileEntity)).toBe(1);
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
          narHash: null,
          narSize: null,
          storedSize: 4242,
          createdAt: 7000,
          lastAccessedAt: 7000,
        });
        expect(await files.storedBytes()).toBe(4242);
        expect((await files.lruCandidates(10)).map((f) => f.key)).toEqual([key]);
      });

      it('records sizes beyond 32 bits', async () => {
        const key = narKeyOf('orphan-huge');
        await files.recordStored(key, 'https://up.example/x', { compression: 'zstd' }, 5 * GiB, 1);
        expect(await files.find(key)).toMatchObject({ fileSize: 5 * GiB, storedSize: 5 * GiB });
        expect(await files.storedBytes()).toBe(5 * GiB);
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
        expect(await count(NarFileEntity)).toBe(1);
      });
    });
  });
}
