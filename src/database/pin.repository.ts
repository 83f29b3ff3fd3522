import { Injectable } from '@nestjs/common';
import { DataSource, In } from 'typeorm';
import { NarInfoEntity, NarInfoReferenceEntity, PinEntity } from './entities';

/** Hashes looked up per query while walking a closure. */
const CLOSURE_BATCH = 500;

/** What a set of pins keeps: the store paths of their closures and the NAR files of those. */
export interface PinnedClosure {
  /** Store path hashes with a stored narinfo. */
  hashes: Set<string>;
  /** NAR keys those narinfos point at. */
  narKeys: Set<string>;
}

/** Pinned store paths, and the closures they keep from the LRU job. */
@Injectable()
export class PinRepository {
  constructor(private readonly ds: DataSource) {}

  private get repo() {
    return this.ds.getRepository(PinEntity);
  }

  /** Pins a store path (again: keeps the first pin's time and author). */
  async add(pin: PinEntity): Promise<void> {
    await this.ds.createQueryBuilder().insert().into(PinEntity).values(pin).orIgnore().execute();
  }

  /** Unpins; false when it was not pinned. */
  async remove(hash: string): Promise<boolean> {
    const result = await this.repo.delete({ hash });
    return (result.affected ?? 0) > 0;
  }

  find(hash: string): Promise<PinEntity | null> {
    return this.repo.findOneBy({ hash });
  }

  list(): Promise<PinEntity[]> {
    return this.repo.find({ order: { createdAt: 'ASC', hash: 'ASC' } });
  }

  /** The closures of every pin (see closureOf). */
  async pinnedClosure(): Promise<PinnedClosure> {
    const pins = await this.repo.find({ select: { hash: true } });
    return this.closureOf(pins.map((p) => p.hash));
  }

  /**
   * The closure of `roots` through stored narinfos: each root with a narinfo, every path its
   * References name, and so on. Paths without a narinfo here end the walk there.
   */
  async closureOf(roots: string[]): Promise<PinnedClosure> {
    const hashes = new Set<string>();
    const narKeys = new Set<string>();
    const seen = new Set<string>(roots);
    let frontier = [...seen];
    while (frontier.length > 0) {
      const next: string[] = [];
      for (let i = 0; i < frontier.length; i += CLOSURE_BATCH) {
        const batch = frontier.slice(i, i + CLOSURE_BATCH);
        const rows = await this.ds.getRepository(NarInfoEntity).find({
          select: { hash: true, narKey: true },
          where: { hash: In(batch) },
        });
        for (const r of rows) {
          hashes.add(r.hash);
          narKeys.add(r.narKey);
        }
        if (rows.length === 0) continue;
        const refs = await this.ds.getRepository(NarInfoReferenceEntity).find({
          select: { narInfoHash: true, position: true, reference: true },
          where: { narInfoHash: In(rows.map((r) => r.hash)) },
        });
        for (const { reference } of refs) {
          const hash = reference.slice(0, 32);
          if (!seen.has(hash)) {
            seen.add(hash);
            next.push(hash);
          }
        }
      }
      frontier = next;
    }
    return { hashes, narKeys };
  }
}
