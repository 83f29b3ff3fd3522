import { Readable } from 'node:stream';
import { describe, expect, it, vi } from 'vitest';
import { FakeUpstream } from '../../test/support/fake-upstream';
import { listFiles } from '../../test/support/files';
import { consume } from '../../test/support/nar-spool-kit';
import { closedPortUrl } from '../../test/support/ports';
import { useServiceModule } from '../../test/support/service-module';
import { makeStorePath, type StorePathFixture } from '../../test/support/store-paths';
import { readAll } from '../../test/support/streams';
import { eventually } from '../../test/support/wait';
import { NotFoundError, ServiceUnavailableError, UpstreamUnavailableError } from '../common/errors';
import { narLockKey } from '../locking/lock-keys';
import { ActiveDownloads } from './active-downloads';
import { NarFetcher } from './nar-fetcher';
import { NarService } from './nar.service';
import { StallGuard } from './stall-guard';
import { PeerClient } from './peer-client';
import { VERIFIER_POOL_PROVIDER } from './verification/verifier-pool';
import { StoredFile } from './stored-file';
import { StoredNars } from './stored-nars';
import { REMEMBER_MS, RememberedNars, STALE_ANSWER_MS } from './stored-nar-memory';

/**
 * The NAR download flow, step by step, on the real providers: SQLite, the filesystem NarStore, the
 * LocalLocker (also standing for another instance's lock), two real upstream servers and, for a
 * download another instance runs, a real HTTP server in that instance's place.
 */

const t = useServiceModule(
  [
    NarService,
    StoredNars,
    NarFetcher,
    ActiveDownloads,
    PeerClient,
    RememberedNars,
    StallGuard,
    VERIFIER_POOL_PROVIDER,
  ],
  {
    // Waiting for another instance: retry every 50 ms at most, 40 times.
    'cache-lock-retry-max-attempts': '40',
    'cache-lock-retry-initial-delay': '10ms',
    'cache-lock-retry-max-delay': '50ms',
  },
);
const service = () => t.module.get(NarService);
const stored = () => t.module.get(StoredNars);
const active = () => t.module.get(ActiveDownloads);
const narPath = (f: StorePathFixture) => `/nar/${f.narName}`;
const peerPath = (f: StorePathFixture) => `/_narwhal/downloads/${f.narName}`;

/** `f` as a finished download leaves it: narinfo and row recorded, object stored, row marked. */
async function putStored(f: StorePathFixture): Promise<void> {
  await t.recordNarInfo(f, t.primary);
  await t.module.store.put(f.narName, Readable.from([f.file]), f.file.length);
  await t.module.narFiles.markStored(f.narName, f.file.length);
}

async function storedBytes(f: StorePathFixture): Promise<Buffer | null> {
  if (!(await t.module.store.stat(f.narName))) return null;
  return readAll(await t.module.store.read(f.narName));
}

/** Waits until this instance runs no download any more (the last one committed or discarded). */
async function downloadsSettled(): Promise<void> {
  await eventually(() => active().size === 0, 10_000, 'downloads settled');
}

describe('NarService: a stored NAR', () => {
  it('is streamed from storage, whole or from a byte offset, without asking upstream', async () => {
    const f = await makeStorePath([t.keyA], { size: 200_000 });
    await putStored(f);

    const whole = await service().get(f.narName);
    expect(whole).toMatchObject({ source: 'storage', length: f.file.length, range: undefined });
    expect((await readAll(whole.body)).equals(f.file)).toBe(true);

    const tail = await service().get(f.narName, 'bytes=150000-');
    expect(tail).toMatchObject({
      source: 'storage',
      length: f.file.length,
      range: { start: 150_000, end: f.file.length - 1 },
    });
    expect((await readAll(tail.body)).equals(f.file.subarray(150_000))).toBe(true);

    expect(await service().head(f.narName)).toEqual({ length: f.file.length });
    expect(t.primary.count(undefined, narPath(f))).toBe(0);
    expect(t.secondary.count(undefined, narPath(f))).toBe(0);
    expect(active().size).toBe(0);
  });

  it('is fetched again when its object vanished from storage', async () => {
    const f = await makeStorePath([t.keyA], { size: 100_000 });
    await putStored(f);
    await t.module.store.delete(f.narName);
    t.primary.publish(f);

    const res = await service().get(f.narName);

    expect(res.source).toBe('download');
    expect((await readAll(res.body)).equals(f.file)).toBe(true);
    await downloadsSettled();
    expect(t.primary.count('GET', narPath(f))).toBe(1);
    expect((await storedBytes(f))?.equals(f.file)).toBe(true);
    expect((await t.module.narFiles.find(f.narName))?.storedSize).toBe(f.file.length);
  });
});

describe('NarService: a small NAR held in memory, past its TTL', () => {
  it('is still answered from memory while the database is asked again: renewed if stored, else forgotten', async () => {
    const f = await makeStorePath([t.keyA], { size: 2_000 });
    await putStored(f);
    const first = await service().get(f.narName);
    expect(Buffer.isBuffer(first.body) && first.body.equals(f.file)).toBe(true);
    expect(stored().rememberedBytes(f.narName)?.equals(f.file)).toBe(true);
    const find = vi.spyOn(t.module.narFiles, 'find');
    const realNow = Date.now.bind(Date);
    let offset = 0;
    const clock = vi.spyOn(Date, 'now').mockImplementation(() => realNow() + offset);
    const memory = t.module.get(RememberedNars);
    try {
      // Past its TTL: answered at once, and the row is read once in the background.
      offset = REMEMBER_MS + 1_000;
      expect(stored().rememberedBytes(f.narName)?.equals(f.file)).toBe(true);
      expect(stored().rememberedBytes(f.narName)?.equals(f.file)).toBe(true);
      await eventually(
        () => memory.lookup(f.narName, Date.now())?.stale === false,
        5000,
        'renewed',
      );
      expect(find).toHaveBeenCalledTimes(1);

      // Its row no longer says stored (deleted elsewhere, the notice lost): one more answer, then
      // it is forgotten and the next request goes to the database.
      await t.module.narFiles.markMissing(f.narName);
      offset += REMEMBER_MS + 1_000;
      expect(stored().rememberedBytes(f.narName)?.equals(f.file)).toBe(true);
      await eventually(() => memory.lookup(f.narName, Date.now()) === undefined, 5000, 'forgotten');
      expect(stored().rememberedBytes(f.narName)).toBeUndefined();

      // Idle for longer than the stale window: not answered from memory at all.
      await t.module.narFiles.markStored(f.narName, f.file.length);
      const again = await service().get(f.narName);
      expect(again.source).toBe('storage');
      offset += REMEMBER_MS + STALE_ANSWER_MS;
      expect(stored().rememberedBytes(f.narName)).toBeUndefined();
    } finally {
      clock.mockRestore();
    }
  });
});

describe('NarService: a NAR not stored yet', () => {
  it('is downloaded once: clients stream it as it arrives, whole or from an offset, and concurrent ones join', async () => {
    const f = await makeStorePath([t.keyA], { size: 400_000 });
    await t.recordNarInfo(f, t.primary);
    const upstream = t.primary.hold(narPath(f), f.file);
    const start = vi.spyOn(t.module.get(NarFetcher), 'start');
    const tryAcquire = vi.spyOn(t.module.locker, 'tryAcquire');

    // Four clients at once: one claim of the NAR's lock, one download they all stream from.
    const [first, ...joined] = await Promise.all([1, 2, 3, 4].map(() => service().get(f.narName)));
    expect(first).toMatchObject({ source: 'download', length: f.file.length, range: undefined });
    expect(joined.map((r) => r.source)).toEqual(['download', 'download', 'download']);
    const firstBody = consume(streamOf(first.body));
    await eventually(() => firstBody.bytes >= f.file.length / 2 - 1, 10_000, 'the first half');
    // A client has half the NAR while the rest is still upstream: nothing is stored yet.
    expect(await t.module.store.stat(f.narName)).toBeNull();
    expect((await t.module.narFiles.find(f.narName))?.storedSize).toBeNull();

    // A client resuming at an offset joins the running download too.
    const tail = await service().get(f.narName, 'bytes=100000-');
    expect(tail).toMatchObject({
      source: 'download',
      length: f.file.length,
      range: { start: 100_000, end: f.file.length - 1 },
    });
    // HEAD meanwhile answers from the running download.
    expect(await service().head(f.narName)).toEqual({ length: f.file.length });
    expect(t.primary.count('HEAD', narPath(f))).toBe(0);
    expect(active().size).toBe(1);
    expect(active().get(f.narName)?.spool.readerCount).toBe(5);
    expect(tryAcquire.mock.calls.filter(([key]) => key === narLockKey(f.narName))).toHaveLength(1);
    expect(start).toHaveBeenCalledTimes(1);
    // The download starts from the row read under the lock, not from a lookup of its own.
    expect(start.mock.calls[0][1]).toMatchObject({ key: f.narName, storedSize: null });
    expect(t.primary.count('GET', narPath(f))).toBe(1);

    const bodies = [firstBody, ...joined.map((r) => consume(streamOf(r.body)))];
    const tailBody = consume(streamOf(tail.body));
    upstream.resume();
    await eventually(
      () => [...bodies, tailBody].every((b) => b.ended),
      10_000,
      'every client has the whole NAR',
    );
    for (const b of bodies) expect(b.data().equals(f.file)).toBe(true);
    expect(tailBody.data().equals(f.file.subarray(100_000))).toBe(true);

    await downloadsSettled();
    expect((await storedBytes(f))?.equals(f.file)).toBe(true);
    expect((await t.module.narFiles.find(f.narName))?.storedSize).toBe(f.file.length);
    const warm = await service().get(f.narName);
    if (!Buffer.isBuffer(warm.body)) warm.body.destroy();
    expect(warm.source).toBe('storage');
    expect(t.primary.count('GET', narPath(f))).toBe(1);
    expect(await listFiles(t.module.store.spool.dir)).toEqual([]);
  });

  it('once a small one is downloaded and stored, it is remembered from its own bytes, not read back', async () => {
    const f = await makeStorePath([t.keyA], { size: 2_000 });
    await t.recordNarInfo(f, t.primary);
    t.primary.publish(f);
    const read = vi.spyOn(t.module.store, 'read');

    const res = await service().get(f.narName);
    expect(res.source).toBe('download');
    expect((await readAll(res.body)).equals(f.file)).toBe(true);
    await downloadsSettled();
    await eventually(() => stored().rememberedBytes(f.narName) !== undefined, 5_000, 'remembered');

    expect(stored().rememberedBytes(f.narName)?.equals(f.file)).toBe(true);
    expect((await storedBytes(f))?.equals(f.file)).toBe(true); // and stored all the same
    expect(read.mock.calls.filter(([name]) => name === f.narName)).toHaveLength(1); // storedBytes'
  });

  it('HEAD never starts a download; it answers from the row and an upstream HEAD', async () => {
    const f = await makeStorePath([t.keyA], { size: 100_000 });
    await t.recordNarInfo(f, t.primary);
    t.primary.publish(f);
    const start = vi.spyOn(t.module.get(NarFetcher), 'start');

    expect(await service().head(f.narName)).toEqual({ length: f.file.length });

    expect(t.primary.count('HEAD', narPath(f))).toBe(1);
    expect(t.primary.count('GET', narPath(f))).toBe(0);
    expect(start).not.toHaveBeenCalled();
    expect(active().size).toBe(0);
    expect(await t.module.store.stat(f.narName)).toBeNull();
    expect(await listFiles(t.module.store.spool.dir)).toEqual([]);

    t.primary.delete(narPath(f));
    await expect(service().head(f.narName)).rejects.toBeInstanceOf(UpstreamUnavailableError);
    const unknown = await makeStorePath([t.keyA]);
    await expect(service().head(unknown.narName)).rejects.toBeInstanceOf(NotFoundError);
    expect(t.primary.count(undefined, narPath(unknown))).toBe(0);
    expect(start).not.toHaveBeenCalled();
  });
});

describe('NarService: a NAR another instance is downloading', () => {
  it('is streamed from that instance, named by the URL in the lock it holds', async () => {
    const f = await makeStorePath([t.keyA], { size: 100_000 });
    await t.recordNarInfo(f, t.primary);
    t.primary.publish(f); // a download here would be possible, and wrong
    const peer = await FakeUpstream.start();
    try {
      peer.set(peerPath(f), { kind: 'serve', body: f.file });
      const lease = await t.module.locker.tryAcquire(narLockKey(f.narName), 60_000, peer.url);
      expect(lease).not.toBeNull();
      const start = vi.spyOn(t.module.get(NarFetcher), 'start');

      const res = await service().get(f.narName);

      expect(res).toMatchObject({ source: 'peer', length: f.file.length });
      expect((await readAll(res.body)).equals(f.file)).toBe(true);
      expect(peer.count('GET', peerPath(f))).toBe(1);
      expect(t.primary.count('GET', narPath(f))).toBe(0);
      expect(start).not.toHaveBeenCalled();
      expect(active().size).toBe(0);
      await lease?.release();
    } finally {
      await peer.close();
    }
  });

  it('is downloaded here once the other instance, no longer downloading it, releases its lock', async () => {
    const f = await makeStorePath([t.keyA], { size: 100_000 });
    await t.recordNarInfo(f, t.primary);
    t.primary.publish(f);
    const peer = await FakeUpstream.start(); // answers 404: it is not downloading the NAR (any more)
    try {
      const lease = await t.module.locker.tryAcquire(narLockKey(f.narName), 60_000, peer.url);

      const get = service().get(f.narName);
      await eventually(() => peer.count('GET', peerPath(f)) >= 1, 5000, 'the peer asked');
      expect(t.primary.count('GET', narPath(f))).toBe(0);
      await lease?.release();

      const res = await get;
      expect(res.source).toBe('download');
      expect((await readAll(res.body)).equals(f.file)).toBe(true);
      expect(t.primary.count('GET', narPath(f))).toBe(1);
      await downloadsSettled();
    } finally {
      await peer.close();
    }
  });

  it('gives up with 503 (ServiceUnavailableError) while a holder that cannot be judged keeps its lock', async () => {
    const f = await makeStorePath([t.keyA]);
    await t.recordNarInfo(f, t.primary);
    t.primary.publish(f);
    // Holder info without a boot id (an older instance): nothing tells whether it is gone.
    const lease = await t.module.locker.tryAcquire(
      narLockKey(f.narName),
      60_000,
      await closedPortUrl(),
    );

    const error: unknown = await service()
      .get(f.narName)
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ServiceUnavailableError);
    expect((error as ServiceUnavailableError).retryAfterSeconds).toBeGreaterThan(0);

    expect(t.primary.count('GET', narPath(f))).toBe(0);
    expect(active().size).toBe(0);
    await lease?.release();
  });

  it('takes the lock over from a holder whose process is gone and downloads the NAR itself', async () => {
    const f = await makeStorePath([t.keyA]);
    await t.recordNarInfo(f, t.primary);
    t.primary.publish(f);
    // A lock held "by another instance" that was killed: nothing listens at its URL any more.
    const gone = `${await closedPortUrl()}#0123456789abcdef`;
    const lease = await t.module.locker.tryAcquire(narLockKey(f.narName), 60_000, gone);
    expect(lease).not.toBeNull();

    const nar = await service().get(f.narName);
    expect(nar.source).toBe('download');
    expect((await readAll(nar.body)).equals(f.file)).toBe(true);
    expect(t.primary.count('GET', narPath(f))).toBe(1);
    // The dead holder's lease is no longer the lock's: releasing it changes nothing.
    expect(await lease!.extend(60_000)).toBe(false);
  });
});

/** A body that must be a stream (a download's, a peer's, a large stored NAR's). */
function streamOf(body: Readable | Buffer | StoredFile): Readable {
  if (Buffer.isBuffer(body) || body instanceof StoredFile)
    throw new Error('expected a stream of a download');
  return body;
}
