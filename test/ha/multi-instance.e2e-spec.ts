import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { reachableServer, type FreshDatabase } from '../database/database-servers';
import { redisServerOrSkip, type RedisServerProcess } from '../locking/redis-servers';
import { S3rverFixture } from '../storage/s3rver';
import { FakeUpstream } from '../support/fake-upstream';
import { sha256Nix32 } from '../support/hash';
import { httpGet, httpGetText as fetchText } from '../support/http-client';
import type { StatusSnapshot } from '../../src/status/status-snapshot';
import { NarwhalProcess } from '../support/narwhal-process';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, type StorePathFixture } from '../support/store-paths';
import { pollUntil } from '../support/wait';

/**
 * The High Availability flow: two narwhal processes behind no balancer at all (the test is the
 * balancer), sharing PostgreSQL, an S3 server and a Redis of their own, in front of one throttled
 * upstream. A NAR asked for on both at once is downloaded once, and the instance that does not
 * download streams it from the one that does.
 */

const MiB = 1024 * 1024;
const CLIENTS = 32;
const LOCK_TTL = '3s';

interface Fetched {
  status: number;
  source?: string;
  contentRange?: string;
  bytes: number;
  sha256: string;
  /** ms since the start of the round: first body byte, end (clean or broken). */
  firstByteAt?: number;
  endAt: number;
  clean: boolean;
}

describe('several instances share one download (PostgreSQL + S3 + Redis)', () => {
  let workDir: string;
  let db: FreshDatabase | null = null;
  let s3: S3rverFixture | null = null;
  let bucket: string;
  let redis: RedisServerProcess | null = null;
  let upstream: FakeUpstream;
  const key = makeKey('up-ha-1');
  let a: NarwhalProcess;
  let b: NarwhalProcess;
  let ready = false;

  beforeAll(async () => {
    const pg = await reachableServer('postgres'); // fails under CI=true when unreachable
    redis = await redisServerOrSkip();
    if (!pg || !redis) return;
    db = await pg.createDatabase();
    s3 = await S3rverFixture.start();
    bucket = await s3.createBucket();
    upstream = await FakeUpstream.start();
    workDir = await mkdtemp(join(tmpdir(), 'narwhal-ha-'));
    [a, b] = await Promise.all([startInstance('a'), startInstance('b')]);
    ready = true;
  });

  afterAll(async () => {
    await a?.kill();
    await b?.kill();
    await upstream?.close();
    await redis?.stop();
    await s3?.stop();
    await db?.drop();
    if (workDir) await rm(workDir, { recursive: true, force: true });
  });

  beforeEach(({ skip, onTestFailed }) => {
    if (!ready) skip();
    onTestFailed(() => {
      console.error(`--- instance a ---\n${a?.logs().slice(-6000)}`);
      console.error(`--- instance b ---\n${b?.logs().slice(-6000)}`);
    });
  });

  function startInstance(name: string): Promise<NarwhalProcess> {
    const c = s3!.storageConfig(bucket, '');
    return NarwhalProcess.start({
      dataPath: join(workDir, name),
      hostname: 'narwhal-ha', // both instances sign with one key name…
      upstreamUrls: [upstream.url],
      upstreamPublicKeys: [
        `${key.secret.name}:${Buffer.from(key.secret.publicKey).toString('base64')}`,
      ],
      env: {
        // …and one key file, as a real deployment shares its secret key.
        CACHE_SECRET_KEY_PATH: join(workDir, 'secret-key'),
        CACHE_DATABASE_URL: db!.config.kind === 'postgres' ? db!.config.url : '',
        CACHE_STORAGE_S3_BUCKET: bucket,
        CACHE_STORAGE_S3_ENDPOINT: s3!.endpoint,
        CACHE_STORAGE_S3_REGION: c.region,
        CACHE_STORAGE_S3_ACCESS_KEY_ID: c.accessKeyId ?? '',
        CACHE_STORAGE_S3_SECRET_ACCESS_KEY: c.secretAccessKey ?? '',
        CACHE_STORAGE_S3_FORCE_PATH_STYLE: 'true',
        CACHE_LOCK_BACKEND: 'redis',
        CACHE_REDIS_ADDRS: redis!.addr,
        CACHE_LOCK_DOWNLOAD_TTL: LOCK_TTL,
        CACHE_LOCK_RETRY_MAX_DELAY: '250ms',
      },
    });
  }

  /** A ≥ 32 MiB uncompressed NAR, served at about 16 MiB/s so that downloads overlap. */
  async function publishBlob(name: string): Promise<StorePathFixture> {
    const f = await makeStorePath([key], { name, size: 34 * MiB, compression: 'none' });
    upstream.publish(f);
    upstream.set(`/${f.narInfo.url}`, { kind: 'serve', body: f.file, chunkDelayMs: 4 });
    return f;
  }

  function narGets(f: StorePathFixture): number {
    return upstream.count('GET', `/${f.narInfo.url}`);
  }

  function objectKeys(): Promise<string[]> {
    return s3!.objectKeys(bucket);
  }

  it('32 clients split across both instances: one upstream download, identical bytes, early first bytes', async () => {
    const blob = await publishBlob('ha-blob');
    const narinfo = await fetchText(`${a.url}/${blob.hash}.narinfo`);
    expect(narinfo.status).toBe(200);
    const url = /^URL: (.*)$/m.exec(narinfo.body)![1];

    const t0 = Date.now();
    const results = await Promise.all(
      Array.from({ length: CLIENTS }, (_, i) => fetchBody(`${(i % 2 ? b : a).url}/${url}`, t0)),
    );

    expect(narGets(blob), 'upstream NAR downloads').toBe(1);
    for (const r of results) {
      expect({ status: r.status, clean: r.clean, bytes: r.bytes, sha256: r.sha256 }).toEqual({
        status: 200,
        clean: true,
        bytes: blob.file.length,
        sha256: blob.fileHash,
      });
    }
    const sources = new Set(results.map((r) => r.source));
    expect(sources, 'one instance downloads, the other streams from it').toEqual(
      new Set(['download', 'peer']),
    );
    // No client can finish before the upstream body ended (the last byte waits for verification).
    const downloadEnded = Math.min(...results.map((r) => r.endAt));
    const waiting = results.filter((r) => r.source === 'peer');
    expect(waiting).toHaveLength(CLIENTS / 2);
    for (const r of waiting) expect(r.firstByteAt!).toBeLessThan(downloadEnded);

    // Stored once (the upload completes just after the last byte reached the clients)…
    expect(
      await waitFor(async () => (await objectKeys()).some((k) => k.includes(blob.fileHash))),
    ).toBe(true);
    expect((await objectKeys()).filter((k) => k.includes(blob.fileHash))).toHaveLength(1);
    // …and served from storage by both instances now.
    await waitFor(async () => (await fetchBody(`${b.url}/${url}`, t0)).source === 'storage');
    const again = await Promise.all([
      fetchBody(`${a.url}/${url}`, t0),
      fetchBody(`${b.url}/${url}`, t0),
    ]);
    expect(again.map((r) => r.source)).toEqual(['storage', 'storage']);
    expect(narGets(blob)).toBe(1);
  });

  it('a Range asked of the instance that is not downloading is streamed from the downloading one', async () => {
    const blob = await publishBlob('ha-range');
    const narinfo = await fetchText(`${a.url}/${blob.hash}.narinfo`);
    expect(narinfo.status).toBe(200);
    const url = /^URL: (.*)$/m.exec(narinfo.body)![1];
    const t0 = Date.now();
    const whole = fetchBody(`${a.url}/${url}`, t0); // a takes the lock and downloads
    expect(await waitFor(async () => Promise.resolve(narGets(blob) === 1), 5_000)).toBe(true);

    const n = blob.file.length;
    const start = 20 * MiB;
    const part = await fetchBody(`${b.url}/${url}`, t0, { range: `bytes=${start}-` });
    expect(part).toMatchObject({
      status: 206,
      source: 'peer',
      contentRange: `bytes ${start}-${n - 1}/${n}`,
      bytes: n - start,
      clean: true,
    });
    expect(part.sha256).toBe(sha256Nix32(blob.file.subarray(start)));
    expect(await whole).toMatchObject({ status: 200, clean: true, sha256: blob.fileHash });
    expect(narGets(blob)).toBe(1);
  });

  it('the status pages tell which instance holds a running download', async () => {
    const blob = await makeStorePath([key], {
      name: 'ha-status',
      size: 24 * MiB,
      compression: 'none',
    });
    upstream.publish(blob);
    // About 3 MiB/s: several seconds to look at both instances' status while it runs.
    upstream.set(`/${blob.narInfo.url}`, { kind: 'serve', body: blob.file, chunkDelayMs: 20 });
    const narinfo = await fetchText(`${a.url}/${blob.hash}.narinfo`);
    const url = /^URL: (.*)$/m.exec(narinfo.body)![1];
    const status = async (n: NarwhalProcess) =>
      JSON.parse((await fetchText(`${n.url}/_narwhal/status.json`)).body) as StatusSnapshot;
    const t0 = Date.now();

    const onA = fetchBody(`${a.url}/${url}`, t0); // a takes the lock and downloads
    const seenOnA = await pollUntil(
      () => status(a),
      (s) => s.downloads.here.some((d) => d.name === blob.narName && d.written > 0),
      { timeoutMs: 15_000, intervalMs: 100 },
    );
    expect(seenOnA.downloads.here.find((d) => d.name === blob.narName)).toMatchObject({
      holder: a.url,
      length: blob.file.length,
    });

    const onB = fetchBody(`${b.url}/${url}`, t0); // b streams it from a
    const seenOnB = await pollUntil(
      () => status(b),
      (s) => s.downloads.fromPeers.some((d) => d.name === blob.narName),
      { timeoutMs: 15_000, intervalMs: 100 },
    );
    expect(seenOnB.downloads.fromPeers).toEqual([
      {
        name: blob.narName,
        holder: a.url,
        startedAt: expect.any(String) as string,
        length: blob.file.length,
      },
    ]);
    expect(seenOnB.downloads.here).toEqual([]);
    expect(seenOnB.instance.url).toBe(b.url);
    expect(seenOnB.backends.lock).toMatchObject({
      backend: 'redis',
      healthy: true,
      degraded: false,
    });

    expect(await onA).toMatchObject({ status: 200, clean: true, sha256: blob.fileHash });
    expect(await onB).toMatchObject({
      status: 200,
      clean: true,
      source: 'peer',
      sha256: blob.fileHash,
    });
    const after = await pollUntil(
      () => status(b),
      (s) => s.downloads.fromPeers.length === 0,
    );
    expect(after.downloads.fromPeers).toEqual([]);
    expect(narGets(blob)).toBe(1);
  });

  it('kill -9 of the downloading instance: the other takes over and nothing partial is left', async () => {
    const blob = await publishBlob('ha-crash');
    const narinfo = await fetchText(`${a.url}/${blob.hash}.narinfo`);
    const url = /^URL: (.*)$/m.exec(narinfo.body)![1];

    const t0 = Date.now();
    const onA = fetchBody(`${a.url}/${url}`, t0, { stopAfterBytes: 4 * MiB });
    const partial = await onA;
    expect(partial.bytes).toBeGreaterThan(0);
    await a.kill(); // mid-transfer: the rest of the NAR is still coming from upstream
    expect(narGets(blob)).toBe(1);
    expect(
      (await objectKeys()).filter((k) => k.includes(blob.fileHash)),
      'no partial object',
    ).toEqual([]);

    // B waits out A's lease (it cannot reach A), then downloads the NAR itself.
    const onB = await fetchBody(`${b.url}/${url}`, t0);
    expect({
      status: onB.status,
      clean: onB.clean,
      sha256: onB.sha256,
      source: onB.source,
    }).toEqual({
      status: 200,
      clean: true,
      sha256: blob.fileHash,
      source: 'download',
    });
    expect(narGets(blob)).toBe(2);
    a = await startInstance('a'); // back for the next test
    // The upload completes just after the last byte reached the client.
    expect(
      await waitFor(async () => (await objectKeys()).some((k) => k.includes(blob.fileHash))),
    ).toBe(true);
    expect((await objectKeys()).filter((k) => k.includes(blob.fileHash))).toHaveLength(1);
  });

  it('Redis down: hits are still served, and misses too (local locks)', async () => {
    const stored = await publishBlob('ha-before-redis-stops');
    const narinfo = await fetchText(`${b.url}/${stored.hash}.narinfo`);
    const url = /^URL: (.*)$/m.exec(narinfo.body)![1];
    expect((await fetchBody(`${b.url}/${url}`, Date.now())).sha256).toBe(stored.fileHash);
    expect(
      await waitFor(
        async () => (await fetchBody(`${a.url}/${url}`, Date.now())).source === 'storage',
      ),
    ).toBe(true);

    await redis!.stop();
    for (const n of [a, b]) {
      const hit = await fetchText(`${n.url}/${stored.hash}.narinfo`);
      expect(hit.status).toBe(200);
      const nar = await fetchBody(`${n.url}/${url}`, Date.now());
      expect({ status: nar.status, sha256: nar.sha256, source: nar.source }).toEqual({
        status: 200,
        sha256: stored.fileHash,
        source: 'storage',
      });
    }
    const miss = await makeStorePath([key], { name: 'ha-while-redis-is-down' });
    upstream.publish(miss);
    expect((await fetchText(`${b.url}/${miss.hash}.narinfo`)).status).toBe(200);
    const ready = await fetchText(`${b.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(lockDetails(ready.body)).toMatchObject({
      status: 'up',
      backend: 'redis',
      degraded: true,
    });

    await redis!.start(); // picked up without restarting narwhal
    const back = await waitFor(
      async () => lockDetails((await fetchText(`${b.url}/readyz`)).body)?.degraded === false,
    );
    expect(back).toBe(true);
  });
});

function lockDetails(
  readyzBody: string,
): { status: string; backend: string; degraded: boolean } | undefined {
  const parsed = JSON.parse(readyzBody) as {
    details?: Record<string, { status: string; backend: string; degraded: boolean }>;
  };
  return parsed.details?.lock;
}

/** Polls `probe` every 200 ms until it holds; false when it still does not after `ms`. */
function waitFor(probe: () => Promise<boolean>, ms = 15_000): Promise<boolean> {
  return pollUntil(probe, (ok) => ok, { timeoutMs: ms, intervalMs: 200 });
}

/** GETs a body without keeping it, hashing it as it streams; never rejects for a broken body. */
async function fetchBody(
  url: string,
  t0: number,
  opts: { stopAfterBytes?: number; range?: string } = {},
): Promise<Fetched> {
  const res = await httpGet(url, {
    t0,
    stopAfterBytes: opts.stopAfterBytes,
    headers: opts.range ? { range: opts.range } : {},
  });
  return {
    status: res.status,
    source: res.headers['x-narwhal-source'] as string | undefined,
    contentRange: res.headers['content-range'],
    bytes: res.bytes,
    sha256: res.sha256,
    firstByteAt: res.firstByteAt,
    endAt: res.endAt,
    clean: res.complete,
  };
}
