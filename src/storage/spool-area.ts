import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, stat, statfs, unlink } from 'node:fs/promises';
import { join } from 'node:path';

const SPOOL_SUFFIX = '.part';

/** A spool file left in the spool directory. */
export interface SpoolFile {
  name: string;
  path: string;
  size: number;
  mtimeMs: number;
  /** Written by this instance (at any time), as opposed to another one sharing the directory. */
  own: boolean;
}

/** Free and total bytes of the filesystem a directory is on. */
export interface DiskSpace {
  /** What it holds: `spool` (download scratch) or `objects` (the filesystem store's NARs). */
  area: 'spool' | 'objects';
  path: string;
  freeBytes: number;
  totalBytes: number;
}

/** The space of the filesystem `path` is on (bytes available to unprivileged writers). */
export async function diskSpace(area: DiskSpace['area'], path: string): Promise<DiskSpace> {
  const s = await statfs(path);
  return { area, path, freeBytes: s.bavail * s.bsize, totalBytes: s.blocks * s.bsize };
}

/**
 * The local directory where downloads spool before they are committed to a store: the one place
 * that knows how spool files are named (`<key>.<owner>.<random>.part`, the owner a short hash of
 * the instance's URL). For the filesystem store it lies on the objects' filesystem (a commit is a
 * rename); for S3 it is local scratch space.
 */
export class SpoolArea {
  private readonly owner: string;
  /** This process's random part of spool names, and how many names it has made. */
  private readonly run = randomBytes(6).toString('hex');
  private made = 0;

  constructor(
    readonly dir: string,
    /** Identifies this instance among those that might share the directory. */
    instance = 'local',
  ) {
    this.owner = createHash('sha256').update(instance).digest('hex').slice(0, 8);
  }

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
  }

  /**
   * A fresh spool file path for a download of `key` (the file is not created). Unique by a random
   * part drawn once per SpoolArea (a process) and a counter: drawing random bytes for every path
   * cost ~40 µs of the event loop per download (a getrandom call through OpenSSL each time).
   */
  newPath(key: string): string {
    const name = key.replace(/\//g, '_'); // a side document's key has a directory
    const unique = `${this.run}${(this.made++).toString(36)}`;
    return join(this.dir, `${name}.${this.owner}.${unique}${SPOOL_SUFFIX}`);
  }

  /** Every spool file in the directory. */
  async list(): Promise<SpoolFile[]> {
    const out: SpoolFile[] = [];
    for (const name of await readdir(this.dir).catch(() => [] as string[])) {
      if (!name.endsWith(SPOOL_SUFFIX)) continue;
      const path = join(this.dir, name);
      const s = await stat(path).catch(() => null);
      if (!s?.isFile()) continue;
      const parts = name.slice(0, -SPOOL_SUFFIX.length).split('.');
      const own = parts.length >= 3 && parts[parts.length - 2] === this.owner;
      out.push({ name, path, size: s.size, mtimeMs: s.mtimeMs, own });
    }
    return out;
  }

  /**
   * Removes the spool files `garbage` picks (this instance's leftovers of a crash, or anybody's
   * unchanged for long). Resolves how many files and bytes were removed.
   */
  async sweep(garbage: (f: SpoolFile) => boolean): Promise<{ files: number; bytes: number }> {
    const removed = { files: 0, bytes: 0 };
    for (const f of await this.list()) {
      if (!garbage(f)) continue;
      if (
        await unlink(f.path).then(
          () => true,
          () => false,
        )
      ) {
        removed.files++;
        removed.bytes += f.size;
      }
    }
    return removed;
  }
}
