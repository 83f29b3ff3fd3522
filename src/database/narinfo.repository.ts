import { Injectable } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { inTransaction, runInTransaction, type Statement } from './transaction';
import { num, numOrNull, SqlDialect } from './sql-dialect';
import { NAR_FILE_COLUMNS, NARINFO_COLUMNS, NARINFO_REPLACED_COLUMNS } from './table-columns';
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

/** Rows per multi-row insert of references or signatures (3 parameters each). */
const CHILD_ROWS_PER_INSERT = 200;

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
  private readonly sql: ReturnType<typeof statements>;
  private readonly db: SqlDialect;

  constructor(private readonly ds: DataSource) {
    this.db = new SqlDialect(ds);
    this.sql = statements(this.db);
  }

  /** The narinfo `hash` with its references and signatures in order (one statement), or null. */
  async find(hash: string): Promise<NarInfoEntity | null> {
    const rows = await this.db.query<FoundRow[]>(this.sql.find, [hash, hash, hash]);
    return rows.length === 0 ? null : entityOf(rows);
  }

  /** Which of `hashes` have a stored narinfo (one query per 500 hashes). */
  async storedAmong(hashes: readonly string[]): Promise<Set<string>> {
    const stored = new Set<string>();
    for (let i = 0; i < hashes.length; i += STORED_AMONG_CHUNK) {
      const chunk = hashes.slice(i, i + STORED_AMONG_CHUNK);
      const rows = await this.db.query<{ hash: string }[]>(
        this.sql.storedAmong(chunk.length),
        chunk,
      );
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
    const row = rowColumns(n, now);
    const sql = this.sql;
    const steps: Statement[] = [
      [
        sql.insertNarFile,
        [
          n.narKey,
          n.narUpstreamUrl,
          ni.compression,
          ni.fileHash ?? null,
          ni.fileSize ?? null,
          ni.narHash,
          ni.narSize,
          null,
          now,
          now,
        ],
      ],
      // An upsert, not delete + insert: it locks the narinfo row, so that concurrent saves of one
      // hash (from other instances) take turns instead of failing on the primary key.
      [
        sql.upsertNarInfo,
        [
          row.hash,
          row.storePath,
          row.narKey,
          row.compression,
          row.fileHash,
          row.fileSize,
          row.narHash,
          row.narSize,
          row.deriver,
          row.system,
          row.ca,
          row.upstreamUrl,
          row.ownSignature,
          row.createdAt,
          row.lastAccessedAt,
        ],
      ],
      [sql.deleteReferences, [n.hash]],
      [sql.deleteSignatures, [n.hash]],
    ];
    for (const [insert, values] of [
      [sql.insertReferences, ni.references],
      [sql.insertSignatures, ni.sigs],
    ] as const) {
      for (let i = 0; i < values.length; i += CHILD_ROWS_PER_INSERT) {
        const chunk = values.slice(i, i + CHILD_ROWS_PER_INSERT);
        steps.push([insert(chunk.length), chunk.flatMap((value, j) => [n.hash, i + j, value])]);
      }
    }
    await runInTransaction(this.ds, steps);
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
    const stale = now - TOUCH_GRANULARITY_MS;
    await this.db.query(this.sql.touchNarInfo, [now, hash, stale]);
    await this.db.query(this.sql.touchNarFile, [now, narKey, stale]);
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

/** The statements of the request path, in `d`'s dialect (see SqlDialect). */
function statements(d: SqlDialect) {
  const q = (name: string) => d.q(name);
  const childInsert = (table: string, column: string) => {
    const texts = new Map<number, string>();
    return (rows: number): string => {
      let text = texts.get(rows);
      if (text === undefined) {
        text = d.insert(table, ['narinfo_hash', 'position', column], rows);
        texts.set(rows, text);
      }
      return text;
    };
  };
  // The narinfo row once per child (kind 0: references, 1: signatures), or alone without any: one
  // statement reads all of it at one point in time, as a save replaces the children in a
  // transaction.
  const find =
    `SELECT ${NARINFO_COLUMNS.map((c) => `n.${q(c)}`).join(', ')}, c.kind, c.position, c.value ` +
    `FROM ${q('narinfos')} n LEFT JOIN (` +
    `SELECT 0 AS kind, ${q('position')}, ${q('reference')} AS value FROM ${q('narinfo_references')} WHERE ${q('narinfo_hash')} = ${d.p(1)} ` +
    `UNION ALL ` +
    `SELECT 1 AS kind, ${q('position')}, ${q('signature')} AS value FROM ${q('narinfo_signatures')} WHERE ${q('narinfo_hash')} = ${d.p(2)}` +
    `) c ON 1 = 1 WHERE n.${q('hash')} = ${d.p(3)} ORDER BY c.kind, c.position`;
  const storedAmongTexts = new Map<number, string>();
  const touch = (table: string, key: string) =>
    `UPDATE ${q(table)} SET ${q('last_accessed_at')} = ${d.p(1)} WHERE ${q(key)} = ${d.p(2)} AND ${q('last_accessed_at')} < ${d.p(3)}`;
  return {
    find,
    storedAmong(count: number): string {
      let text = storedAmongTexts.get(count);
      if (text === undefined) {
        text = `SELECT ${q('hash')} FROM ${q('narinfos')} WHERE ${q('hash')} IN (${d.params(1, count)})`;
        storedAmongTexts.set(count, text);
      }
      return text;
    },
    insertNarFile: d.insertIgnore('nar_files', NAR_FILE_COLUMNS),
    upsertNarInfo: d.upsert('narinfos', NARINFO_COLUMNS, 'hash', NARINFO_REPLACED_COLUMNS),
    deleteReferences: `DELETE FROM ${q('narinfo_references')} WHERE ${q('narinfo_hash')} = ${d.p(1)}`,
    deleteSignatures: `DELETE FROM ${q('narinfo_signatures')} WHERE ${q('narinfo_hash')} = ${d.p(1)}`,
    insertReferences: childInsert('narinfo_references', 'reference'),
    insertSignatures: childInsert('narinfo_signatures', 'signature'),
    touchNarInfo: touch('narinfos', 'hash'),
    touchNarFile: touch('nar_files', 'key'),
  };
}

/** A row of the `find` statement: the narinfo's columns and one child (or none). */
interface FoundRow {
  hash: string;
  store_path: string;
  nar_key: string;
  compression: string;
  file_hash: string | null;
  file_size: string | number | null;
  nar_hash: string;
  nar_size: string | number;
  deriver: string | null;
  system: string | null;
  ca: string | null;
  upstream_url: string;
  own_signature: string | null;
  created_at: string | number;
  last_accessed_at: string | number;
  kind: string | number | null;
  position: string | number | null;
  value: string | null;
}

/** The entity the rows of `find` describe (there is at least one row). */
function entityOf(rows: FoundRow[]): NarInfoEntity {
  const r = rows[0];
  const e = Object.assign(new NarInfoEntity(), {
    hash: r.hash,
    storePath: r.store_path,
    narKey: r.nar_key,
    compression: r.compression,
    fileHash: r.file_hash,
    fileSize: numOrNull(r.file_size),
    narHash: r.nar_hash,
    narSize: num(r.nar_size),
    deriver: r.deriver,
    system: r.system,
    ca: r.ca,
    upstreamUrl: r.upstream_url,
    ownSignature: r.own_signature,
    createdAt: num(r.created_at),
    lastAccessedAt: num(r.last_accessed_at),
    references: [] as NarInfoReferenceEntity[],
    signatures: [] as NarInfoSignatureEntity[],
  });
  for (const c of rows) {
    if (c.kind === null || c.value === null) continue;
    const position = num(c.position);
    if (num(c.kind) === 0) {
      e.references.push(
        Object.assign(new NarInfoReferenceEntity(), {
          narInfoHash: r.hash,
          position,
          reference: c.value,
        }),
      );
    } else {
      e.signatures.push(
        Object.assign(new NarInfoSignatureEntity(), {
          narInfoHash: r.hash,
          position,
          signature: c.value,
        }),
      );
    }
  }
  return e;
}
