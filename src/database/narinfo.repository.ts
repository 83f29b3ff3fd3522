import { Injectable } from '@nestjs/common';
import { DataSource, In, LessThan } from 'typeorm';
import { inTransaction } from './transaction';
import type { NarInfo } from '../nix/narinfo';
import {
  NarFileEntity,
  NarInfoEntity,
  NarInfoReferenceEntity,
  NarInfoSignatureEntity,
} from './entities';

/** Touches closer together than this are not written again (keeps hits from turning into writes). */
export const TOUCH_GRANULARITY_MS = 60_000;
/** Hashes per `IN (…)` list: far below every dialect's limit on bound parameters. */
const STORED_AMONG_CHUNK = 500;

/** Every narinfos column but the key: a narinfo saved again replaces all of them. */
const NARINFO_REPLACED_COLUMNS = [
  'store_path',
  'nar_key',
  'compression',
  'file_hash',
  'file_size',
  'nar_hash',
  'nar_size',
  'deriver',
  'system',
  'ca',
  'upstream_url',
  'own_signature',
  'created_at',
  'last_accessed_at',
];

export interface NewNarInfo {
  hash: string;
  narInfo: NarInfo;
  /** narwhal's NAR key that the narinfo's URL is rewritten to. */
  narKey: string;
  /** Upstream base URL the narinfo came from. */
  upstreamUrl: string;
  /** Absolute upstream URL of the NAR bytes. */
  narUpstreamUrl: string;
  /** narwhal's own signature, cached as `<public key>|<sig>`, when made before saving. */
  ownSignature?: string;
}

@Injectable()
export class NarInfoRepository {
  constructor(private readonly ds: DataSource) {}

  async find(hash: string): Promise<NarInfoEntity | null> {
    const row = await this.ds.getRepository(NarInfoEntity).findOne({
      where: { hash },
      relations: { references: true, signatures: true },
      order: { references: { position: 'ASC' }, signatures: { position: 'ASC' } },
    });
    return row;
  }

  /** Which of `hashes` have a stored narinfo (one query per 500 hashes). */
  async storedAmong(hashes: readonly string[]): Promise<Set<string>> {
    const stored = new Set<string>();
    for (let i = 0; i < hashes.length; i += STORED_AMONG_CHUNK) {
      const rows = await this.ds.getRepository(NarInfoEntity).find({
        select: { hash: true },
        where: { hash: In(hashes.slice(i, i + STORED_AMONG_CHUNK)) },
      });
      for (const r of rows) stored.add(r.hash);
    }
    return stored;
  }

  /**
   * Records a verified upstream narinfo and the NAR file it points to, in one transaction, and
   * resolves the row as written (what `find` would read back now, without reading it).
   */
  async save(n: NewNarInfo, now = Date.now()): Promise<NarInfoEntity> {
    const ni = n.narInfo;
    await inTransaction(this.ds, async (m) => {
      await m
        .createQueryBuilder()
        .insert()
        .into(NarFileEntity)
        .values({
          key: n.narKey,
          upstreamUrl: n.narUpstreamUrl,
          compression: ni.compression,
          fileHash: ni.fileHash ?? null,
          fileSize: ni.fileSize ?? null,
          narHash: ni.narHash,
          narSize: ni.narSize,
          storedSize: null,
          createdAt: now,
          lastAccessedAt: now,
        })
        .orIgnore()
        .execute();
      // An upsert, not delete + insert: it locks the narinfo row, so that concurrent saves of one
      // hash (from other instances) take turns instead of failing on the primary key.
      await m
        .createQueryBuilder()
        .insert()
        .into(NarInfoEntity)
        .values(rowColumns(n, now))
        .orUpdate(NARINFO_REPLACED_COLUMNS, ['hash'])
        .execute();
      await m.delete(NarInfoReferenceEntity, { narInfoHash: n.hash });
      await m.delete(NarInfoSignatureEntity, { narInfoHash: n.hash });
      if (ni.references.length > 0) {
        await m.insert(
          NarInfoReferenceEntity,
          ni.references.map((reference, position) => ({
            narInfoHash: n.hash,
            position,
            reference,
          })),
        );
      }
      if (ni.sigs.length > 0) {
        await m.insert(
          NarInfoSignatureEntity,
          ni.sigs.map((signature, position) => ({ narInfoHash: n.hash, position, signature })),
        );
      }
    });
    return writtenRow(n, now);
  }

  /** NarHash and NarSize of a narinfo pointing at NAR `narKey`, or null when none does. */
  async narHashOf(narKey: string): Promise<{ narHash: string; narSize: number } | null> {
    const row = await this.ds.getRepository(NarInfoEntity).findOne({
      select: { hash: true, narHash: true, narSize: true },
      where: { narKey },
    });
    return row ? { narHash: row.narHash, narSize: row.narSize } : null;
  }

  /** Hashes of the narinfos that point at NAR `narKey`. */
  async hashesOf(narKey: string): Promise<string[]> {
    const rows = await this.ds.getRepository(NarInfoEntity).find({
      select: { hash: true },
      where: { narKey },
    });
    return rows.map((r) => r.hash);
  }

  /**
   * Deletes a narinfo (references and signatures cascade) and, in the same transaction, the row of
   * its NAR file when no other narinfo points at it. Resolves what was deleted (null: no narinfo);
   * the caller removes the NAR's object when `narRowDeleted`.
   */
  async deleteWithUnsharedNar(
    hash: string,
  ): Promise<{ narKey: string; narRowDeleted: boolean } | null> {
    return inTransaction(this.ds, async (m) => {
      const row = await m.findOne(NarInfoEntity, {
        select: { hash: true, narKey: true },
        where: { hash },
      });
      if (!row) return null;
      await m.delete(NarInfoEntity, { hash });
      const shared = await m.countBy(NarInfoEntity, { narKey: row.narKey });
      if (shared > 0) return { narKey: row.narKey, narRowDeleted: false };
      await m.delete(NarFileEntity, { key: row.narKey });
      return { narKey: row.narKey, narRowDeleted: true };
    });
  }

  count(): Promise<number> {
    return this.ds.getRepository(NarInfoEntity).count();
  }

  /**
   * Up to `limit` narinfos (hash and NAR key) whose NAR has no nar_files row, with a hash after
   * `after`, in hash order. The database finds them (an anti-join on the nar_key index).
   */
  danglingPage(after: string, limit: number): Promise<Pick<NarInfoEntity, 'hash' | 'narKey'>[]> {
    return this.ds
      .getRepository(NarInfoEntity)
      .createQueryBuilder('n')
      .leftJoin(NarFileEntity, 'f', 'f.key = n.narKey')
      .select(['n.hash', 'n.narKey'])
      .where('f.key IS NULL')
      .andWhere('n.hash > :after', { after })
      .orderBy('n.hash', 'ASC')
      .limit(limit)
      .getMany();
  }

  /** Deletes the narinfo (references and signatures cascade) only if it still dangles. */
  async deleteIfDangling(hash: string): Promise<boolean> {
    const q = (name: string) => this.ds.driver.escape(name);
    const result = await this.ds
      .createQueryBuilder()
      .delete()
      .from(NarInfoEntity)
      .where(`${q('hash')} = :hash`, { hash })
      .andWhere(
        `NOT EXISTS (SELECT 1 FROM ${q('nar_files')} f WHERE f.${q('key')} = ${q('narinfos')}.${q('nar_key')})`,
      )
      .execute();
    return (result.affected ?? 0) > 0;
  }

  async setOwnSignature(hash: string, signature: string): Promise<void> {
    await this.ds.getRepository(NarInfoEntity).update({ hash }, { ownSignature: signature });
  }

  /** Marks a narinfo and its NAR file as used now (at most once per TOUCH_GRANULARITY_MS). */
  async touch(hash: string, narKey: string, now = Date.now()): Promise<void> {
    const stale = LessThan(now - TOUCH_GRANULARITY_MS);
    await this.ds
      .getRepository(NarInfoEntity)
      .update({ hash, lastAccessedAt: stale }, { lastAccessedAt: now });
    await this.ds
      .getRepository(NarFileEntity)
      .update({ key: narKey, lastAccessedAt: stale }, { lastAccessedAt: now });
  }
}

/** The columns of the narinfos row `save` writes for `n` at `now`. */
function rowColumns(n: NewNarInfo, now: number) {
  const ni = n.narInfo;
  return {
    hash: n.hash,
    storePath: ni.storePath,
    narKey: n.narKey,
    compression: ni.compression,
    fileHash: ni.fileHash ?? null,
    fileSize: ni.fileSize ?? null,
    narHash: ni.narHash,
    narSize: ni.narSize,
    deriver: ni.deriver ?? null,
    system: ni.system ?? null,
    ca: ni.ca ?? null,
    upstreamUrl: n.upstreamUrl,
    ownSignature: n.ownSignature ?? null,
    createdAt: now,
    lastAccessedAt: now,
  };
}

/** The narinfos row `save` wrote for `n`, with its references and signatures in order. */
function writtenRow(n: NewNarInfo, now: number): NarInfoEntity {
  const ni = n.narInfo;
  return Object.assign(new NarInfoEntity(), rowColumns(n, now), {
    references: ni.references.map((reference, position) =>
      Object.assign(new NarInfoReferenceEntity(), { narInfoHash: n.hash, position, reference }),
    ),
    signatures: ni.sigs.map((signature, position) =>
      Object.assign(new NarInfoSignatureEntity(), { narInfoHash: n.hash, position, signature }),
    ),
  });
}
