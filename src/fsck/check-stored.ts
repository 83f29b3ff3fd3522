import { DownloadFailedError, NotFoundError } from '../common/errors';
import type { NarFileEntity } from '../database/entities';
import { expectationsOf, NarVerifier } from '../nar/nar-verifier';
import { forEachConcurrently, type FsckContext, message, PAGE, sameObject } from './context';
import type { ObjectInfo } from './object-info';

// ---- phase 1: rows marked stored → object present, right size, right content ----------------------

export async function checkStoredNars(ctx: FsckContext): Promise<void> {
  const total = await ctx.files.countStored();
  ctx.emit({ type: 'phase', phase: 'stored', total });
  let last = '';
  for (;;) {
    const page = await ctx.files.storedPage(last, PAGE);
    if (page.length === 0) break;
    last = page[page.length - 1].key;
    await forEachConcurrently(page, ctx.concurrency, async (row) => {
      await ctx.guarded(row.key, () => checkStoredNar(ctx, row));
      ctx.summary.storedNars++;
      ctx.emit({ type: 'progress', phase: 'stored', done: ctx.summary.storedNars, total });
    });
  }
  ctx.emit({ type: 'phase-done', phase: 'stored', done: ctx.summary.storedNars });
}

async function checkStoredNar(ctx: FsckContext, row: NarFileEntity): Promise<void> {
  let info: ObjectInfo | null;
  try {
    info = await ctx.inspect(row.key);
  } catch (e) {
    return ctx.problem('unreadable', row.key, `could not be looked up: ${message(e)}`);
  }
  if (!info) return onMissing(ctx, row);
  const sizeIssue = sizeMismatch(row, info.size);
  if (sizeIssue) return onBadObject(ctx, 'size-mismatch', row, info, sizeIssue);
  if (!ctx.options.verifyContent) return;

  // A NAR stored by name has no NarHash of its own; a narinfo naming it vouches for one.
  const vouched = row.narHash === null ? await ctx.narInfos.narHashOf(row.key) : null;
  const verifier = new NarVerifier(expectationsOf(vouched ? { ...row, ...vouched } : row));
  if (!verifier.checksContent) {
    ctx.summary.contentUnverifiable++;
    return;
  }
  try {
    const body = await ctx.store.read(row.key);
    // for-await destroys `body` if the loop throws; update() waits while the decompressor is full.
    for await (const chunk of body as AsyncIterable<Buffer>) await verifier.update(chunk);
    // A read that ended early (e.g. a cut connection) says nothing about the content: never delete
    // for it. (Bad content fails in update() mid-way or in finish(), as DownloadFailedError.)
    if (verifier.bytes !== info.size) {
      throw new Error(`the read ended after ${verifier.bytes} of ${info.size} bytes`);
    }
    await verifier.finish();
    ctx.summary.contentVerified++;
  } catch (e) {
    verifier.destroy();
    if (e instanceof NotFoundError) return onMissing(ctx, row);
    if (e instanceof DownloadFailedError) {
      ctx.summary.contentVerified++;
      return onBadObject(ctx, 'hash-mismatch', row, info, e.message);
    }
    return ctx.problem('unreadable', row.key, `could not be read: ${message(e)}`);
  }
}

async function onMissing(ctx: FsckContext, row: NarFileEntity): Promise<void> {
  // Look again: narwhal may have evicted it (row and object) or re-stored it since the page was read.
  const now = await ctx.files.find(row.key);
  if (now?.storedSize == null) return;
  if ((await ctx.inspect(row.key)) !== null) return;
  await ctx.problem(
    'missing',
    row.key,
    `recorded as stored (${now.storedSize} bytes) but not in storage`,
    async () => {
      await ctx.files.markMissing(row.key);
      return true;
    },
  );
}

/** A present object that is wrong: mark the row not stored (stop serving it), then delete the object. */
async function onBadObject(
  ctx: FsckContext,
  kind: 'size-mismatch' | 'hash-mismatch',
  row: NarFileEntity,
  checked: ObjectInfo,
  detail: string,
): Promise<void> {
  const now = await ctx.files.find(row.key);
  if (now?.storedSize !== row.storedSize) return; // evicted or re-stored meanwhile
  if (!sameObject(checked, await ctx.inspect(row.key))) return; // replaced meanwhile
  await ctx.problem(kind, row.key, detail, async () => {
    await ctx.files.markMissing(row.key);
    // From here narwhal may start a new download; its commit creates a new object version.
    const current = await ctx.inspect(row.key);
    if (current === null) return true;
    if (!sameObject(checked, current)) return false;
    await ctx.store.delete(row.key);
    return true;
  });
}

function sizeMismatch(row: NarFileEntity, size: number): string | null {
  if (row.storedSize !== null && size !== row.storedSize) {
    return `object has ${size} bytes, the database records ${row.storedSize} stored`;
  }
  if (row.fileSize !== null && size !== row.fileSize) {
    return `object has ${size} bytes, FileSize says ${row.fileSize}`;
  }
  return null;
}
