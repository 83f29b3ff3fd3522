import { describe, expect, it } from 'vitest';
import { listFiles } from '../../test/support/files';
import { consume, exists } from '../../test/support/nar-spool-kit';
import { useServiceModule } from '../../test/support/service-module';
import { makeStorePath, type StorePathFixture } from '../../test/support/store-paths';
import { readAll } from '../../test/support/streams';
import { eventually } from '../../test/support/wait';
import { DownloadFailedError, UpstreamUnavailableError } from '../common/errors';
import type { NarInfo } from '../nix/narinfo';
import { NarFetcher } from './nar-fetcher';
import { VERIFIER_POOL_PROVIDER } from './verification/verifier-pool';

/**
 * One upstream download of one NAR, on the real providers: the nar_files row in SQLite, the
 * filesystem NarStore and its spool directory, two real upstream servers.
 */

const t = useServiceModule([NarFetcher, VERIFIER_POOL_PROVIDER]);
const fetcher = () => t.module.get(NarFetcher);
const narPath = (f: StorePathFixture) => `/nar/${f.narName}`;

/** True once `p` has settled (checked without waiting for it). */
function settledFlag(p: Promise<unknown>): () => boolean {
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  return () => settled;
}

async function stored(f: StorePathFixture): Promise<Buffer | null> {
  if (!(await t.module.store.stat(f.narName))) return null;
  return readAll(await t.module.store.read(f.narName));
}

/** The spool directory holds no file (no download left anything behind). */
async function spoolFiles(): Promise<string[]> {
  return listFiles(t.module.store.spool.dir);
}

describe('NarFetcher with a nar_files row', () => {
  it('downloads from the upstream URL of its row into a spool that a reader streams from before the download ends', async () => {
    const f = await makeStorePath([t.keyA], { size: 400_000, url: 'blobs/upstream-name.xz' });
    await t.recordNarInfo(f, t.primary);
    const upstream = t.primary.hold('/blobs/upstream-name.xz', f.file);

    const { spool, finished } = await fetcher().start(f.narName);
    const done = settledFlag(finished);
    const reader = consume(spool.createReader());
    await eventually(() => reader.bytes >= f.file.length / 2 - 1, 10_000, 'the first half read');

    // The upstream holds back the second half: the reader has bytes, nothing is finished or stored.
    expect(spool.length).toBe(f.file.length);
    expect(spool.state).toBe('streaming');
    expect(reader.ended).toBe(false);
    expect(done()).toBe(false);
    expect(await t.module.store.stat(f.narName)).toBeNull();
    expect((await t.module.narFiles.find(f.narName))?.storedSize).toBeNull();
    expect(reader.data().equals(f.file.subarray(0, reader.bytes))).toBe(true);

    upstream.resume();
    expect(await finished).toBe(true);
    await eventually(() => reader.ended, 10_000, 'the reader ended');
    expect(reader.error).toBeUndefined();
    expect(reader.data().equals(f.file)).toBe(true);
    expect(t.primary.count('GET', '/blobs/upstream-name.xz')).toBe(1);
    expect(t.primary.count(undefined, narPath(f))).toBe(0);
    expect(t.secondary.count(undefined, narPath(f))).toBe(0);
  });

  it('once finished, the NAR is committed to storage, its row marked stored and the spool file gone', async () => {
    const f = await makeStorePath([t.keyA], { size: 100_000 });
    await t.recordNarInfo(f, t.primary);
    t.primary.publish(f);

    const { spool, finished } = await fetcher().start(f.narName);

    expect(await finished).toBe(true);
    expect((await stored(f))?.equals(f.file)).toBe(true);
    expect((await t.module.narFiles.find(f.narName))?.storedSize).toBe(f.file.length);
    expect(await exists(spool.path)).toBe(false);
    expect(await spoolFiles()).toEqual([]);
  });

  /** Each spoils the download of `f` its way; some return the narinfo to record instead of f's. */
  const failures: [string, (f: StorePathFixture) => Promise<NarInfo> | void][] = [
    ['its bytes do not match FileHash', (f) => t.primary.corrupt(f.narName)],
    ['its body breaks off', (f) => t.primary.truncate(f.narName)],
    [
      'it does not decompress to the NarHash of its row',
      async (f) => ({ ...f.narInfo, narHash: (await makeStorePath([t.keyA])).narInfo.narHash }),
    ],
  ];

  it.each(failures)(
    'when %s: finished is false, nothing is stored, the spool is gone and readers get an error',
    async (_, spoil) => {
      const f = await makeStorePath([t.keyA], { size: 300_000 });
      t.primary.publish(f);
      await t.recordNarInfo(f, t.primary, (await spoil(f)) ?? f.narInfo);

      const { spool, finished } = await fetcher().start(f.narName);
      const reader = consume(spool.createReader());

      expect(await finished).toBe(false);
      expect(spool.state).toBe('failed');
      await eventually(() => reader.closed, 10_000, 'the reader closed');
      expect(reader.error).toBeInstanceOf(DownloadFailedError);
      expect(reader.ended).toBe(false);
      expect(reader.bytes).toBeLessThan(f.file.length);
      expect(await t.module.store.stat(f.narName)).toBeNull();
      expect((await t.module.narFiles.find(f.narName))?.storedSize).toBeNull();
      expect(await exists(spool.path)).toBe(false);
      expect(await spoolFiles()).toEqual([]);
    },
  );

  it('abort breaks the download: finished is false, readers get an error, nothing is stored', async () => {
    const f = await makeStorePath([t.keyA], { size: 300_000 });
    await t.recordNarInfo(f, t.primary);
    const upstream = t.primary.hold(narPath(f), f.file);

    const { spool, finished, abort } = await fetcher().start(f.narName);
    const reader = consume(spool.createReader());
    await eventually(() => reader.bytes > 0, 10_000, 'the first bytes read');
    abort('shutting down');

    expect(await finished).toBe(false);
    await eventually(() => reader.closed, 10_000, 'the reader closed');
    expect(reader.error).toBeInstanceOf(DownloadFailedError);
    expect(reader.error?.message).toMatch(/shutting down/);
    expect(await t.module.store.stat(f.narName)).toBeNull();
    expect((await t.module.narFiles.find(f.narName))?.storedSize).toBeNull();
    expect(await spoolFiles()).toEqual([]);
    upstream.resume();
  });

  it('rejects with UpstreamUnavailableError when the URL of its row has nothing, asking no other upstream', async () => {
    const f = await makeStorePath([t.keyA]);
    await t.recordNarInfo(f, t.primary);
    t.secondary.set(narPath(f), { kind: 'serve', body: f.file });

    await expect(fetcher().start(f.narName)).rejects.toBeInstanceOf(UpstreamUnavailableError);

    expect(t.primary.count('GET', narPath(f))).toBe(1);
    expect(t.secondary.count('GET', narPath(f))).toBe(0);
    expect(await spoolFiles()).toEqual([]);
  });
});

describe('NarFetcher without a nar_files row (a NAR asked for by name alone)', () => {
  it('fetches nar/<name> from the upstreams in priority order and records it once it hashes to the name', async () => {
    const f = await makeStorePath([t.keyA], { size: 100_000 });
    t.secondary.set(narPath(f), { kind: 'serve', body: f.file });

    const { finished } = await fetcher().start(f.narName);

    expect(await finished).toBe(true);
    expect(t.primary.count('GET', narPath(f))).toBe(1);
    expect(t.secondary.count('GET', narPath(f))).toBe(1);
    expect((await stored(f))?.equals(f.file)).toBe(true);
    expect(await t.module.narFiles.find(f.narName)).toMatchObject({
      upstreamUrl: `${t.secondary.url}${narPath(f)}`,
      compression: 'xz',
      fileHash: `sha256:${f.fileHash}`,
      narHash: null,
      storedSize: f.file.length,
    });
  });

  it('refuses bytes that do not hash to the FileHash in the name: nothing stored, no row', async () => {
    const f = await makeStorePath([t.keyA], { size: 100_000 });
    const impostor = await makeStorePath([t.keyA], { size: 100_000 });
    t.primary.set(narPath(f), { kind: 'serve', body: impostor.file });

    const { finished } = await fetcher().start(f.narName);

    expect(await finished).toBe(false);
    expect(await t.module.store.stat(f.narName)).toBeNull();
    expect(await t.module.narFiles.find(f.narName)).toBeNull();
    expect(await spoolFiles()).toEqual([]);
  });

  it('rejects with UpstreamUnavailableError when no upstream has it', async () => {
    const f = await makeStorePath([t.keyA]);
    t.primary.set(narPath(f), { kind: 'status', status: 500 });

    await expect(fetcher().start(f.narName)).rejects.toBeInstanceOf(UpstreamUnavailableError);

    expect(t.primary.count('GET', narPath(f))).toBe(1);
    expect(t.secondary.count('GET', narPath(f))).toBe(1);
    expect(await t.module.narFiles.find(f.narName)).toBeNull();
    expect(await spoolFiles()).toEqual([]);
  });
});
