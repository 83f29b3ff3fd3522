import { mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { buildConfig } from '../config/app-config';
import { MetricsService } from '../metrics/metrics.service';
import { FilesystemNarStore } from '../storage/filesystem/filesystem-nar-store';
import { ActiveDownloads } from './active-downloads';

/** At start, spool files left by a crash are removed — which ones depends on who may share them. */

let root: string;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'narwhal-active-'));
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A spool file as an instance at `selfUrl` leaves it, unchanged since `ageMs` ago. */
async function leftSpool(selfUrl: string, ageMs = 0): Promise<string> {
  const store = new FilesystemNarStore(root, selfUrl);
  await store.init();
  const path = store.spool.newPath(`${'a'.repeat(52)}.nar.xz`);
  await writeFile(path, 'half a download');
  const at = (Date.now() - ageMs) / 1000;
  await utimes(path, at, at);
  return basename(path);
}

/** Starts ActiveDownloads of an instance at `selfUrl` and lists the spool files left after it. */
async function startAt(selfUrl: string, lockBackend: 'local' | 'redis'): Promise<string[]> {
  const config = buildConfig(
    { 'cache-data-path': root, 'cache-lock-backend': lockBackend, 'log-level': 'error' },
    root,
  );
  const store = new FilesystemNarStore(root, selfUrl);
  await store.init();
  await new ActiveDownloads(config, store, new MetricsService(config)).onModuleInit();
  return readdir(store.spool.dir);
}

describe('ActiveDownloads at start', () => {
  it('removes every spool with local locks, also those named for another address of this instance', async () => {
    await leftSpool('http://host-a:8501');
    await leftSpool('http://host-b:9000');
    expect(await startAt('http://host-b:9000', 'local')).toEqual([]);
  });

  it('with Redis locks removes its own spools and only stale ones of other instances', async () => {
    await leftSpool('http://host-b:9000');
    const live = await leftSpool('http://host-a:8501'); // another instance's running download
    await leftSpool('http://host-c:8501', 2 * 60 * 60_000); // an instance gone long ago
    expect(await startAt('http://host-b:9000', 'redis')).toEqual([live]);
  });
});
