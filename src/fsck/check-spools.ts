import { unlink } from 'node:fs/promises';
import type { FsckContext } from './context';

// ---- phase 4: spool files → none left over from a crash ---------------------------------------------

/**
 * A download's spool lives only while it runs (and narwhal removes its own at start); one unchanged
 * for longer than the orphan grace was left by a crash or an instance that is gone.
 */
export async function checkSpools(ctx: FsckContext): Promise<void> {
  const files = await ctx.store.spool.list();
  ctx.emit({ type: 'phase', phase: 'spools', total: files.length });
  const now = ctx.now();
  for (const f of files) {
    ctx.summary.spools++;
    const age = now - f.mtimeMs;
    if (age < ctx.options.orphanGraceMs) continue;
    await ctx.problem(
      'leftover-spool',
      f.name,
      `spool file of ${f.size} bytes unchanged for ${Math.round(age / 60_000)} min`,
      () =>
        unlink(f.path).then(
          () => true,
          (e: NodeJS.ErrnoException) => {
            if (e.code === 'ENOENT') return false; // removed meanwhile (narwhal started, or a commit)
            throw e;
          },
        ),
    );
  }
  ctx.emit({ type: 'phase-done', phase: 'spools', done: ctx.summary.spools });
}
