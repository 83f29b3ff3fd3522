import { open, statfs, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeUpstream } from '../support/fake-upstream';
import { printFigures } from '../support/figures';
import { readOrNull } from '../support/files';
import { httpGet } from '../support/http-client';
import { objectPath, spoolsRemoved, storedSize, waitStored } from '../support/narwhal-app';
import { NarwhalProcess } from '../support/narwhal-process';
import { mib } from '../support/proc-memory';
import { makeKey } from '../support/signing-keys';
import { makeStorePath } from '../support/store-paths';
import { mountTmpfs, type Tmpfs } from '../support/tmpfs';
import { eventually } from '../support/wait';

/**
 * narwhal's disk fills up and is freed again: the data path (SQLite and the filesystem store) is a
 * 32 MiB tmpfs, filled until 3 MiB are left, and a client asks for a cold 8 MiB NAR. It gets a 507
 * (when the disk is found full before the first byte) or a broken body, never a clean 200; the log
 * names ENOSPC, /readyz shows the disk low, and nothing partial is left. Once space is freed, the
 * same NAR downloads, verifies and is stored, without a restart.
 */

const MiB = 1024 * 1024;
const DISK_MIB = 32;
const NAR_BYTES = 8 * MiB;

const key = makeKey('up-a-1');
let tmpfs: Tmpfs | null = null;
let upstream: FakeUpstream;
let narwhal: NarwhalProcess | undefined;

beforeAll(async () => {
  tmpfs = await mountTmpfs(DISK_MIB);
  if (!tmpfs) return;
  upstream = await FakeUpstream.start();
  narwhal = await NarwhalProcess.start({
    dataPath: tmpfs.dir,
    upstreamUrls: [upstream.url],
    upstreamPublicKeys: [key.publicText],
    // NAR prefetch off: it would download each NAR right after its narinfo, before the disk fills.
    env: { CACHE_MIN_FREE_SPACE: '8M', CACHE_PREFETCH_NARS: 'false' },
  });
});

afterAll(async () => {
  await narwhal?.kill();
  await upstream?.close();
  await tmpfs?.unmount();
});

beforeEach(({ onTestFailed, skip }) => {
  if (!tmpfs) skip();
  onTestFailed(() => {
    console.error(`--- narwhal output (last 6000 chars) ---\n${narwhal?.logs().slice(-6000)}`);
  });
});

async function freeBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  return s.bavail * s.bsize;
}

/** Writes a file that takes all the free space of its disk but `leftFree` bytes. */
async function fill(path: string, leftFree: number): Promise<void> {
  const handle = await open(path, 'w');
  try {
    const chunk = Buffer.alloc(MiB);
    for (let free = await freeBytes(path); free > leftFree; free = await freeBytes(path)) {
      const { bytesWritten } = await handle
        .write(chunk, 0, Math.min(chunk.length, free - leftFree))
        .catch((e: NodeJS.ErrnoException) => {
          if (e.code === 'ENOSPC') return { bytesWritten: 0 };
          throw e;
        });
      if (bytesWritten === 0) break;
    }
  } finally {
    await handle.close();
  }
}

/** `/readyz`'s status and whether it shows the disk low. */
async function readiness(n: NarwhalProcess): Promise<{ status: number; low: unknown }> {
  const res = await httpGet(`${n.url}/readyz`, { keepBody: true });
  const body = JSON.parse(res.body.toString('utf8')) as {
    details?: { disk?: { low?: unknown } };
  };
  return { status: res.status, low: body.details?.disk?.low };
}

describe.each([
  ['3 MiB left', 3 * MiB],
  ['nothing left', 0],
])('a cold 8 MiB NAR on a full disk (%s)', (what, leftFree) => {
  it('is a 507 or a broken body, nothing is kept, and it is served once space is back', async () => {
    const n = narwhal!;
    const dir = tmpfs!.dir;
    const f = await makeStorePath([key], { size: NAR_BYTES, compression: 'none' });
    upstream.publish(f);
    expect((await httpGet(`${n.url}/${f.hash}.narinfo`)).status).toBe(200);
    const readyBefore = await readiness(n);

    const filler = join(dir, 'filler');
    await fill(filler, leftFree);
    const freeWhenFull = await freeBytes(dir);
    const readyFull = await readiness(n);
    const logBefore = n.logs().length;
    const onFullDisk = await httpGet(`${n.url}/nar/${f.narName}`);
    await spoolsRemoved(n);
    // The process's output reaches this one through a pipe, after the spool is gone at the earliest.
    await eventually(
      () => n.logs().slice(logBefore).includes('ENOSPC'),
      10_000,
      'an ENOSPC line in the log',
    ).catch(() => undefined); // asserted below, with the figures printed first
    const enospcLines = n
      .logs()
      .slice(logBefore)
      .split('\n')
      .filter((l) => l.includes('ENOSPC'));
    const objectWhenFull = await readOrNull(objectPath(n, f.narName));
    const storedWhenFull = storedSize(n, f.narName);

    await unlink(filler);
    const readyFreed = await readiness(n);
    const afterFreed = await httpGet(`${n.url}/nar/${f.narName}`, { keepBody: true });
    printFigures(`disk full (${what})`, {
      'disk MiB': DISK_MIB,
      'free when full MiB': mib(freeWhenFull),
      'NAR MiB': mib(f.file.length),
      'answer on full disk': onFullDisk.status,
      'bytes the client got': onFullDisk.bytes,
      'body complete': String(onFullDisk.complete),
      'ENOSPC log lines': enospcLines.length,
      'readyz (before, full, freed)': [readyBefore, readyFull, readyFreed]
        .map((r) => `${r.status} low=${String(r.low)}`)
        .join(', '),
      'answer once freed': afterFreed.status,
      'complete once freed': String(afterFreed.complete),
    });

    expect(readyBefore).toEqual({ status: 200, low: false });
    // Low either way; with no byte left the storage check's probe file cannot be written: 503.
    expect(readyFull.low).toBe(true);
    expect(readyFull.status).toBe(leftFree > 0 ? 200 : 503);
    if (onFullDisk.status === 200) expect(onFullDisk.complete).toBe(false);
    else expect(onFullDisk.status).toBe(507);
    expect(enospcLines.length).toBeGreaterThanOrEqual(1);
    expect(objectWhenFull).toBeNull();
    expect(storedWhenFull).toBeNull();

    expect(readyFreed).toEqual({ status: 200, low: false });
    expect(afterFreed.status).toBe(200);
    expect(afterFreed.complete).toBe(true);
    expect(afterFreed.body.equals(f.file)).toBe(true);
    await waitStored(n, f.narName, f.file, 30_000);
    expect(n.exitStatus()).toBeNull();
  });
});
