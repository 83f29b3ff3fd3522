import {
  mkdir,
  open,
  readdir,
  rename,
  rm,
  stat,
  unlink,
  writeFile,
  type FileHandle,
} from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { NotFoundError } from '../../common/errors';
import type { NarStore } from '../nar-store';
import { isDocumentKey, isNarKey } from '../object-keys';
import { diskSpace, SpoolArea, type DiskSpace } from '../spool-area';

/** Bytes read from a stored file at a time (1 MiB measured no faster, and costs more memory). */
const READ_CHUNK_BYTES = 256 * 1024;

/**
 * NARs as files under `<root>/nar/<k0>/<k0k1>/<key>`; side documents (listings, logs,
 * realisations) as `<root>/<dir>/<name>`; spools in `<root>/tmp`. A commit is
 * fsync + rename + fsync of the directory, so a crash never leaves a partial object under `nar/`.
 */
export class FilesystemNarStore implements NarStore {
  readonly spool: SpoolArea;
  readonly writeMode = 'spool';
  private readonly objectsDir: string;

  /** `instance` names this instance's spool files (see SpoolArea). */
  constructor(
    private readonly root: string,
    instance?: string,
  ) {
    this.spool = new SpoolArea(join(root, 'tmp'), instance);
    this.objectsDir = join(root, 'nar');
  }

  async init(): Promise<void> {
    await mkdir(this.objectsDir, { recursive: true });
    await this.spool.init();
  }

  pathOf(key: string): string {
    if (isNarKey(key)) return join(this.objectsDir, key.slice(0, 1), key.slice(0, 2), key);
    if (isDocumentKey(key)) return join(this.root, key);
    throw new Error(`invalid storage key ${JSON.stringify(key)}`);
  }

  async stat(key: string): Promise<{ size: number } | null> {
    try {
      const s = await stat(this.pathOf(key));
      return { size: s.size };
    } catch (e) {
      if (isNotFound(e)) return null;
      throw e;
    }
  }

  async read(key: string, range?: { start: number; end?: number }): Promise<Readable> {
    const path = this.pathOf(key);
    if (range) checkRange(range);
    // Open first so that a missing file is a clean rejection rather than a stream error.
    const handle = await open(path, 'r').catch((e: unknown) => {
      throw isNotFound(e) ? new NotFoundError(`${key} is not stored`) : e;
    });
    // The stream owns the handle (and closes it); passing a bare fd would let GC close it mid-read.
    try {
      return handle.createReadStream({
        autoClose: true,
        start: range?.start,
        end: range?.end,
        highWaterMark: READ_CHUNK_BYTES,
      });
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  openFile(key: string): Promise<FileHandle> {
    return open(this.pathOf(key), 'r').catch((e: unknown) => {
      throw isNotFound(e) ? new NotFoundError(`${key} is not stored`) : e;
    });
  }

  async putFile(key: string, spoolPath: string, options: { synced?: boolean } = {}): Promise<void> {
    const target = this.pathOf(key);
    if (!options.synced) {
      const fh = await open(spoolPath, 'r+');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
    const dir = dirname(target);
    // The 1,024 fan-out directories are made once each: try the rename first and make the
    // directory only when it is missing (a thread-pool round trip less for nearly every commit).
    try {
      await rename(spoolPath, target);
    } catch (e) {
      if (!isNotFound(e)) throw e;
      await mkdir(dir, { recursive: true });
      await rename(spoolPath, target);
    }
    await syncDir(dir);
  }

  async put(
    key: string,
    body: Readable,
    size?: number,
    options: { alreadyStored?: () => Promise<boolean> } = {},
  ): Promise<void> {
    this.pathOf(key); // validate before writing anything
    const spool = this.spool.newPath(key);
    try {
      await pipeline(body, createWriteStream(spool, { flags: 'wx', mode: 0o644 }));
      if (size !== undefined) {
        const { size: got } = await stat(spool);
        if (got !== size) throw new Error(`${key}: got ${got} bytes, expected ${size}`);
      }
      if (await options.alreadyStored?.()) await rm(spool, { force: true });
      else await this.putFile(key, spool);
    } catch (e) {
      await rm(spool, { force: true });
      throw e;
    }
  }

  async delete(key: string): Promise<void> {
    try {
      await unlink(this.pathOf(key));
    } catch (e) {
      if (!isNotFound(e)) throw e;
    }
  }

  async *list(): AsyncIterable<{ key: string; size: number }> {
    for (const a of await readdirSafe(this.objectsDir)) {
      for (const b of await readdirSafe(join(this.objectsDir, a))) {
        for (const key of await readdirSafe(join(this.objectsDir, a, b))) {
          const s = await this.stat(key).catch(() => null);
          if (s) yield { key, size: s.size };
        }
      }
    }
  }

  async checkWritable(): Promise<void> {
    const probe = join(this.spool.dir, `.probe-${process.pid}`);
    try {
      await writeFile(probe, 'ok');
    } finally {
      // Also when the write fails (a full disk creates the file, then cannot write to it).
      await rm(probe, { force: true });
    }
  }

  async localSpace(): Promise<DiskSpace[]> {
    return [await diskSpace('spool', this.spool.dir), await diskSpace('objects', this.objectsDir)];
  }

  async close(): Promise<void> {}
}

function checkRange({ start, end }: { start: number; end?: number }): void {
  const ok =
    Number.isSafeInteger(start) &&
    start >= 0 &&
    (end === undefined || (Number.isSafeInteger(end) && end >= start));
  if (!ok) throw new RangeError(`invalid byte range ${start}-${end ?? ''}`);
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function readdirSafe(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (e) {
    if (isNotFound(e)) return [];
    throw e;
  }
}

function isNotFound(e: unknown): boolean {
  return (e as NodeJS.ErrnoException)?.code === 'ENOENT';
}
