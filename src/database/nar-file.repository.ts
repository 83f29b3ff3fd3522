import { Injectable } from '@nestjs/common';
import { DataSource, In, IsNull, LessThan, MoreThan, Not } from 'typeorm';
import { NarFileEntity, NarInfoEntity } from './entities';
import { TOUCH_GRANULARITY_MS } from './narinfo.repository';
import { inTransaction } from './transaction';

@Injectable()
export class NarFileRepository {
  constructor(private readonly ds: DataSource) {}

  find(key: string): Promise<NarFileEntity | null> {
    return this.ds.getRepository(NarFileEntity).findOneBy({ key });
  }

  async markStored(key: string, size: number, now = Date.now()): Promise<void> {
    await this.ds
      .getRepository(NarFileEntity)
      .update({ key }, { storedSize: size, lastAccessedAt: now });
  }

  /** Records a NAR fetched without a narinfo (its name carried the FileHash it was checked against). */
  async recordStored(
    key: string,
    upstreamUrl: string,
    expect: { compression: string; fileHash?: string },
    size: number,
    now = Date.now(),
  ): Promise<void> {
    await this.ds
      .createQueryBuilder()
      .insert()
      .into(NarFileEntity)
      .values({
        key,
        upstreamUrl,
        compression: expect.compression,
        fileHash: expect.fileHash ?? null,
        fileSize: size,
        narHash: null,
        narSize: null,
        storedSize: size,
        createdAt: now,
        lastAccessedAt: now,
      })
      .orIgnore()
      .execute();
    await this.markStored(key, size, now);
  }

  /**
   * A narinfo now vouches for this NAR: record what it must decompress to (and, for an uploaded NAR
   * whose name did not tell, its compression).
   */
  async setNarHash(
    key: string,
    narHash: string,
    narSize: number,
    compression?: string,
  ): Promise<void> {
    await this.ds
      .getRepository(NarFileEntity)
      .update({ key }, { narHash, narSize, ...(compression ? { compression } : {}) });
  }

  /** The object vanished from storage: forget that it was stored so that it is fetched again. */
  async markMissing(key: string): Promise<void> {
    await this.ds.getRepository(NarFileEntity).update({ key }, { storedSize: null });
  }

  async touch(key: string, now = Date.now()): Promise<void> {
    await this.ds
      .getRepository(NarFileEntity)
      .update(
        { key, lastAccessedAt: LessThan(now - TOUCH_GRANULARITY_MS) },
        { lastAccessedAt: now },
      );
  }

  /** Total bytes of stored NARs. */
  async storedBytes(): Promise<number> {
    const row = await this.ds
      .getRepository(NarFileEntity)
      .createQueryBuilder('f')
      .select('COALESCE(SUM(f.stored_size), 0)', 'total')
      .getRawOne<{ total: string | number }>();
    return Number(row?.total ?? 0);
  }

  /** How many NAR files are marked stored. */
  countStored(): Promise<number> {
    return this.ds.getRepository(NarFileEntity).countBy({ storedSize: Not(IsNull()) });
  }

  /** Up to `limit` NAR files marked stored whose key sorts after `after`, in key order (paging). */
  storedPage(after: string, limit: number): Promise<NarFileEntity[]> {
    return this.ds.getRepository(NarFileEntity).find({
      where: { storedSize: Not(IsNull()), key: MoreThan(after) },
      order: { key: 'ASC' },
      take: limit,
    });
  }

  /** Total stored bytes of the NAR files `keys` (those stored). */
  async storedBytesOf(keys: Iterable<string>): Promise<number> {
    const all = [...keys];
    let total = 0;
    for (let i = 0; i < all.length; i += 500) {
      const rows = await this.ds.getRepository(NarFileEntity).find({
        select: { key: true, storedSize: true },
        where: { key: In(all.slice(i, i + 500)), storedSize: Not(IsNull()) },
      });
      for (const r of rows) total += r.storedSize ?? 0;
    }
    return total;
  }

  /** Those of `keys` whose row is marked stored. */
  async storedAmong(keys: string[]): Promise<Set<string>> {
    if (keys.length === 0) return new Set();
    const rows = await this.ds.getRepository(NarFileEntity).find({
      select: { key: true, storedSize: true },
      where: { key: In(keys), storedSize: Not(IsNull()) },
    });
    return new Set(rows.map((r) => r.key));
  }

  /**
   * Stored NAR files, least recently used first; with `after`, those that come after it in that
   * order (paging past files the caller keeps, e.g. pinned ones).
   */
  lruCandidates(
    limit: number,
    after?: Pick<NarFileEntity, 'lastAccessedAt' | 'key'>,
  ): Promise<NarFileEntity[]> {
    const stored = { storedSize: Not(IsNull()) };
    return this.ds.getRepository(NarFileEntity).find({
      where: after
        ? [
            { ...stored, lastAccessedAt: MoreThan(after.lastAccessedAt) },
            { ...stored, lastAccessedAt: after.lastAccessedAt, key: MoreThan(after.key) },
          ]
        : stored,
      order: { lastAccessedAt: 'ASC', key: 'ASC' },
      take: limit,
    });
  }

  /** Deletes a NAR file row and every narinfo that points at it. */
  async deleteWithNarInfos(key: string): Promise<void> {
    await inTransaction(this.ds, async (m) => {
      await m.delete(NarInfoEntity, { narKey: key });
      await m.delete(NarFileEntity, { key });
    });
  }
}
