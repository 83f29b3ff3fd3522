import { Injectable } from '@nestjs/common';
import { DataSource, In, IsNull, MoreThan, Not } from 'typeorm';
import { NarFileEntity, NarInfoEntity } from './entities';
import { TOUCH_GRANULARITY_MS } from './narinfo.repository';
import { num, numOrNull, SqlDialect } from './sql-dialect';
import { NAR_FILE_COLUMNS } from './table-columns';
import { inTransaction } from './transaction';

const COLUMNS = NAR_FILE_COLUMNS;

type Row = Record<(typeof COLUMNS)[number], string | number | null>;

@Injectable()
export class NarFileRepository {
  private readonly sql: ReturnType<typeof statements>;
  private readonly db: SqlDialect;

  constructor(private readonly ds: DataSource) {
    this.db = new SqlDialect(ds);
    this.sql = statements(this.db);
  }

  async find(key: string): Promise<NarFileEntity | null> {
    const rows = await this.db.query<Row[]>(this.sql.find, [key]);
    return rows.length === 0 ? null : entityOf(rows[0]);
  }

  async markStored(key: string, size: number, now = Date.now()): Promise<void> {
    await this.db.query(this.sql.markStored, [size, now, key]);
  }

  /** Records a NAR fetched without a narinfo (its name carried the FileHash it was checked against). */
  async recordStored(
    key: string,
    upstreamUrl: string,
    expect: { compression: string; fileHash?: string },
    size: number,
    now = Date.now(),
  ): Promise<void> {
    await this.db.query(this.sql.insertIgnore, [
      key,
      upstreamUrl,
      expect.compression,
      expect.fileHash ?? null,
      size,
      null,
      null,
      size,
      now,
      now,
    ]);
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
    await this.db.query(this.sql.touch, [now, key, now - TOUCH_GRANULARITY_MS]);
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

/** The statements of the request path, in `d`'s dialect (see SqlDialect). */
function statements(d: SqlDialect) {
  const q = (name: string) => d.q(name);
  const table = q('nar_files');
  return {
    find: `SELECT ${COLUMNS.map(q).join(', ')} FROM ${table} WHERE ${q('key')} = ${d.p(1)}`,
    markStored: `UPDATE ${table} SET ${q('stored_size')} = ${d.p(1)}, ${q('last_accessed_at')} = ${d.p(2)} WHERE ${q('key')} = ${d.p(3)}`,
    insertIgnore: d.insertIgnore('nar_files', COLUMNS),
    touch: `UPDATE ${table} SET ${q('last_accessed_at')} = ${d.p(1)} WHERE ${q('key')} = ${d.p(2)} AND ${q('last_accessed_at')} < ${d.p(3)}`,
  };
}

function entityOf(r: Row): NarFileEntity {
  return Object.assign(new NarFileEntity(), {
    key: r.key as string,
    upstreamUrl: r.upstream_url as string,
    compression: r.compression as string,
    fileHash: r.file_hash as string | null,
    fileSize: numOrNull(r.file_size),
    narHash: r.nar_hash as string | null,
    narSize: numOrNull(r.nar_size),
    storedSize: numOrNull(r.stored_size),
    createdAt: num(r.created_at),
    lastAccessedAt: num(r.last_accessed_at),
  });
}
