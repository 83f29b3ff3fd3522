import { readdir, readFile, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';

/** What a test can see of narwhal's data directory. */

/** Every file (not directory) under `dir`, as absolute paths; a missing `dir` has none. */
export async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(
    (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [];
      throw err;
    },
  );
  return entries.filter((e) => !e.isDirectory()).map((e) => join(e.parentPath, e.name));
}

/** Every file under `dir` with its size, as `relative/path:size`, sorted. Missing dir → []. */
export async function snapshot(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const path of await listFiles(dir)) {
    const info = await stat(path).catch(() => null); // a spool file may go away meanwhile
    if (info) out.push(`${relative(dir, path)}:${info.size}`);
  }
  return out.sort();
}

export async function readOrNull(path: string): Promise<Buffer | null> {
  return readFile(path).catch(() => null);
}
