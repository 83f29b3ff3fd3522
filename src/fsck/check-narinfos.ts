import { type FsckContext, PAGE } from './context';

// ---- phase 3: narinfos → a nar_files row ------------------------------------------------------------

export async function checkNarInfos(ctx: FsckContext): Promise<void> {
  const total = await ctx.narInfos.count();
  ctx.emit({ type: 'phase', phase: 'narinfos', total });
  // Pages of dangling narinfos keep memory bounded.
  let last = '';
  for (;;) {
    const page = await ctx.narInfos.danglingPage(last, PAGE);
    if (page.length === 0) break;
    last = page[page.length - 1].hash;
    for (const n of page) {
      await ctx.problem(
        'dangling-narinfo',
        n.hash,
        `points at NAR ${n.narKey}, which has no nar_files row`,
        () => ctx.narInfos.deleteIfDangling(n.hash),
      );
    }
  }
  ctx.summary.narInfos = total;
  ctx.emit({ type: 'phase-done', phase: 'narinfos', done: total });
}
