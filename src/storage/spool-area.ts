import { randomBytes } from 'node:crypto';
import { mkdir, readdir, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';

const SPOOL_SUFFIX = '.part';

/**
 * The local directory where downloads spool before they are committed to a store: the one place
 * that knows how spool files are named (`<key>.<random>.part`). For the filesystem store it lies on
 * the objects' filesystem (a commit is a rename); for S3 it is local scratch space.
 */
export class SpoolArea {
  constructor(readonly dir: string) {}

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
  }

  /** A fresh spool file path for a download of `key` (the file is not created). */
  newPath(key: string): string {
    const name = key.replace(/\//g, '_'); // a side document's key has a directory
    return join(this.dir, `${name}.${randomBytes(6).toString('hex')}${SPOOL_SUFFIX}`);
  }

  /**
   * Removes spool files unchanged for at least `olderThanMs` (left behind by a crash: never visible
   * as objects, but they take space). Resolves how many files and bytes were removed.
   */
  async sweep(olderThanMs: number, now = Date.now()): Promise<{ files: number; bytes: number }> {
    const removed = { files: 0, bytes: 0 };
    for (const name of await readdir(this.dir).catch(() => [] as string[])) {
      if (!name.endsWith(SPOOL_SUFFIX)) continue;
      const path = join(this.dir, name);
      const s = await stat(path).catch(() => null);
      if (!s || now - s.mtimeMs < olderThanMs) continue;
      if (
        await unlink(path).then(
          () => true,
          () => false,
        )
      ) {
        removed.files++;
        removed.bytes += s.size;
      }
    }
    return removed;
  }
}
