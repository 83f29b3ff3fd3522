import { forEachConcurrently, type FsckContext, message, PAGE, sameObject } from './context';
import type { ObjectInfo } from './object-info';

// ---- phase 2: objects → a row marked stored ---------------------------------------------------------

export async function checkObjects(ctx: FsckContext): Promise<void> {
  ctx.emit({ type: 'phase', phase: 'objects' });
  let batch: string[] = [];
  const flush = async () => {
    const keys = batch;
    batch = [];
    const stored = await ctx.files.storedAmong(keys);
    await forEachConcurrently(keys, ctx.concurrency, async (key) => {
      if (!stored.has(key)) await ctx.guarded(key, () => checkUnreferenced(ctx, key));
      ctx.summary.objects++;
      ctx.emit({ type: 'progress', phase: 'objects', done: ctx.summary.objects });
    });
  };
  for await (const o of ctx.store.list()) {
    batch.push(o.key);
    if (batch.length >= PAGE) await flush();
  }
  await flush();
  ctx.emit({ type: 'phase-done', phase: 'objects', done: ctx.summary.objects });
}

async function checkUnreferenced(ctx: FsckContext, key: string): Promise<void> {
  let info: ObjectInfo | null;
  try {
    info = await ctx.inspect(key);
  } catch (e) {
    return ctx.problem('unreadable', key, `could not be looked up: ${message(e)}`);
  }
  if (!info) return; // deleted meanwhile (LRU deletes rows first, then objects)
  const age = info.changedAt === undefined ? undefined : ctx.now() - info.changedAt;
  if (age === undefined || age < ctx.options.orphanGraceMs) {
    // Possibly a download between committing the object and marking its row stored.
    ctx.summary.youngObjectsSkipped++;
    return;
  }
  const row = await ctx.files.find(key);
  if (row?.storedSize != null) return; // its download has been recorded meanwhile
  const why = row ? 'its row is not marked stored' : 'no row';
  await ctx.problem(
    'orphan',
    key,
    `${info.size} bytes, ${why}, last changed ${formatAge(age)} ago`,
    async () => {
      // Right before deleting, look once more: the row may have been marked stored just now.
      if ((await ctx.files.find(key))?.storedSize != null) return false;
      if (!sameObject(info, await ctx.inspect(key))) return false;
      await ctx.store.delete(key);
      return true;
    },
  );
}

function formatAge(ms: number): string {
  const m = Math.floor(ms / 60_000);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  return h < 48 ? `${h}h${m % 60}m` : `${Math.floor(h / 24)}d`;
}
