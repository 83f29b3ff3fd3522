import { NarFileEntity, NarInfoEntity } from '../database/entities';
import { type FsckContext, PAGE } from './context';

// ---- phase 3: narinfos → a nar_files row ------------------------------------------------------------

export async function checkNarInfos(ctx: FsckContext): Promise<void> {
  const total = await ctx.ds.getRepository(NarInfoEntity).count();
  ctx.emit({ type: 'phase', phase: 'narinfos', total });
  // The database finds the dangling ones (anti-join on the nar_key index); pages keep memory bounded.
  let last = '';
  for (;;) {
    const page = await ctx.ds
      .getRepository(NarInfoEntity)
      .createQueryBuilder('n')
      .leftJoin(NarFileEntity, 'f', 'f.key = n.narKey')
      .select(['n.hash', 'n.narKey'])
      .where('f.key IS NULL')
      .andWhere('n.hash > :last', { last })
      .orderBy('n.hash', 'ASC')
      .limit(PAGE)
      .getMany();
    if (page.length === 0) break;
    last = page[page.length - 1].hash;
    for (const n of page) {
      await ctx.problem(
        'dangling-narinfo',
        n.hash,
        `points at NAR ${n.narKey}, which has no nar_files row`,
        () => deleteDanglingNarInfo(ctx, n.hash),
      );
    }
  }
  ctx.summary.narInfos = total;
  ctx.emit({ type: 'phase-done', phase: 'narinfos', done: total });
}

/** Deletes the narinfo (its references and signatures cascade) only if it still dangles. */
async function deleteDanglingNarInfo(ctx: FsckContext, hash: string): Promise<boolean> {
  const q = (name: string) => ctx.ds.driver.escape(name);
  const result = await ctx.ds
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
