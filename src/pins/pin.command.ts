import type { AppConfig } from '../config/app-config';
import { formatSize } from '../config/units';
import { openDataSource } from '../database/data-source';
import { NarFileRepository } from '../database/nar-file.repository';
import { NarInfoRepository } from '../database/narinfo.repository';
import { PinRepository } from '../database/pin.repository';
import { PinService, type PinView } from './pin.service';

type Out = Pick<NodeJS.WriteStream, 'write'>;

/**
 * `narwhal pin add|rm PATH…` and `narwhal pin list`, on the database the settings name. Resolves the
 * exit code: 1 when a path could not be pinned or unpinned (the others still are).
 */
export async function runPinCommand(
  config: AppConfig,
  action: { add: string[] } | { rm: string[] } | { list: true },
  out: Out = process.stdout,
  err: Out = process.stderr,
): Promise<number> {
  const ds = await openDataSource(config.database);
  try {
    const pins = new PinService(
      new PinRepository(ds),
      new NarInfoRepository(ds),
      new NarFileRepository(ds),
    );
    if ('list' in action) {
      for (const p of await pins.list()) out.write(`${describe(p)}\n`);
      return 0;
    }
    let failed = 0;
    for (const path of 'add' in action ? action.add : action.rm) {
      try {
        if ('add' in action) out.write(`pinned ${describe(await pins.pin(path, 'cli'))}\n`);
        else {
          await pins.unpin(path);
          out.write(`unpinned ${path}\n`);
        }
      } catch (e) {
        err.write(`narwhal: ${path}: ${(e as Error).message}\n`);
        failed++;
      }
    }
    return failed > 0 ? 1 : 0;
  } finally {
    await ds.destroy();
  }
}

function describe(p: PinView): string {
  const { paths, storedBytes } = p.closure;
  return `${p.storePath} (closure: ${paths} path${paths === 1 ? '' : 's'}, ${formatSize(storedBytes)} stored; pinned ${p.createdAt} by ${p.createdBy})`;
}
