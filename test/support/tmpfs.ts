import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A small tmpfs of its own (`mount -t tmpfs -o size=…`, as root): a disk that really fills up.
 * Where mounting is not allowed the test is skipped loudly — and fails under CI=true, where the
 * suite must not hide.
 */
export interface Tmpfs {
  dir: string;
  unmount(): Promise<void>;
}

export async function mountTmpfs(sizeMiB: number): Promise<Tmpfs | null> {
  const dir = await mkdtemp(join(tmpdir(), 'narwhal-tmpfs-'));
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m`, 'tmpfs', dir], {
    encoding: 'utf8',
  });
  if (mounted.status === 0) {
    return {
      dir,
      async unmount() {
        const r = spawnSync('umount', [dir], { encoding: 'utf8' });
        if (r.status !== 0)
          throw new Error(`umount ${dir} failed: ${r.stderr || r.error?.message}`);
        await rm(dir, { recursive: true, force: true });
      },
    };
  }
  await rm(dir, { recursive: true, force: true });
  const reason = (mounted.stderr || mounted.error?.message || `exit ${mounted.status}`).trim();
  if (process.env.CI === 'true') {
    throw new Error(`The disk-full suite needs to mount a tmpfs (CI=true): ${reason}`);
  }
  console.warn(
    `\n*** SKIPPING the disk-full suite: cannot mount a tmpfs (${reason}).\n` +
      '*** Run it as root (or with CAP_SYS_ADMIN); on CI this is an error.\n',
  );
  return null;
}
