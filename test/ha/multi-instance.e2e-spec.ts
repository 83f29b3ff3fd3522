import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { reachableServer, type FreshDatabase } from '../database/database-servers';
import { redisServerOrSkip, type RedisServerProcess } from '../locking/redis-servers';
import { S3rverFixture } from '../storage/s3rver';
import { FakeUpstream } from '../support/fake-upstream';
import { sha256Nix32 } from '../support/hash';
import type { StatusSnapshot } from '../../src/status/status-snapshot';
import { download, httpGet } from '../support/http-client';
import { NarwhalProcess, runNarwhalCommand } from '../support/narwhal-process';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, type StorePathFixture } from '../support/store-paths';
import { pollUntil } from '../support/wait';

/**
 * The High Availability flow: two narwhal processes behind no balancer at all (the test is the
 * balancer), sharing PostgreSQL, an S3 server and a Redis of their own, in front of one throttled
 * upstream, with reads behind a token (the test's requests carry one; the instances authenticate to
 * each other on their own). A NAR asked for on both at once is downloaded once, and the instance that does not
 * download streams it from the one that does.
 */

const MiB = 1024 * 1024;
const CLIENTS = 32;
/**
 * Leases of 6 s, and waiters that give up (503) after about 3 s: a waiter that gets through within
 * that is not waiting out a dead holder's lease — it took the lock over.
 */
const LOCK_TTL = '6s';
const LOCK_RETRIES = '12';
/** Takeover runs after kill -9 (more with NARWHAL_HA_HEAVY=1). */
const TAKEOVER_RUNS = process.env.NARWHAL_HA_HEAVY === '1' ? 10 : 3;

/** The read (and delete) token every request of the test sends: reads need one here. */
let auth: Record<string, string> = {};

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
    const made = await runNarwhalCommand(
      ['token', 'create', '--name', 'ha-test', '--perm', 'read,delete'],
      { CACHE_DATABASE_URL: db.config.kind === 'postgres' ? db.config.url : '' },
    );
    expect(made.code, made.stderr).toBe(0);
    auth = { authorization: `Bearer ${made.stdout.trim()}` };
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
        CACHE_LOCK_RETRY_MAX_ATTEMPTS: LOCK_RETRIES,
        CACHE_LOCK_RETRY_MAX_DELAY: '250ms',
        PROMETHEUS_ENABLED: 'true',
        CACHE_REQUIRE_READ_TOKEN: 'true',
        CACHE_ALLOW_DELETE_VERB: 'true',
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
    expect((await httpGet(`${a.url}/${blob.hash}.narinfo`)).status, 'anonymous').toBe(401);
    const narinfo = await fetchText(`${a.url}/${blob.hash}.narinfo`);
    expect(narinfo.status).toBe(200);
    const url = /^URL: (.*)$/m.exec(narinfo.body)![1];
    expect((await httpGet(`${b.url}/${url}`)).status, 'anonymous').toBe(401);

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

  it('kill -9 of the downloading instance: the other takes over at once, nothing partial is left', async () => {
    const takeoversBefore = await counter(b, 'narwhal_lock_takeovers_total', 'nar');
    const figures: string[] = [];
    for (let run = 0; run < TAKEOVER_RUNS; run++) {
      const blob = await publishBlob(`ha-crash-${run}`);
      const narinfo = await fetchText(`${a.url}/${blob.hash}.narinfo`);
      const url = /^URL: (.*)$/m.exec(narinfo.body)![1];

      const t0 = Date.now();
      const onA = fetchBody(`${a.url}/${url}`, t0); // a takes the lock and downloads
      expect(await waitFor(async () => Promise.resolve(narGets(blob) === 1), 5_000)).toBe(true);
      // A client of b joins through a's peer endpoint and gets some of it…
      const viaPeer = download(`${b.url}/${url}`, { t0, headers: auth });
      expect(await waitFor(() => Promise.resolve(viaPeer.received() > 2 * MiB), 10_000)).toBe(true);
      await a.kill(); // …then a dies mid-transfer.
      const killedAt = Date.now();
      const broken = await viaPeer.done;
      expect(broken.status === 200 && broken.complete, 'no clean end of a broken body').toBe(false);
      expect((await onA).clean).toBe(false);
      expect(
        (await objectKeys()).filter((k) => k.includes(blob.fileHash)),
        'no partial object',
      ).toEqual([]);

      // b finds a's lease held by a process that is gone and downloads the NAR itself, well within
      // the lease (its waiters would give up with 503 before the lease ran out).
      const onB = await fetchBody(`${b.url}/${url}`, killedAt);
      expect({
        status: onB.status,
        clean: onB.clean,
        sha256: onB.sha256,
        source: onB.source,
      }).toEqual({ status: 200, clean: true, sha256: blob.fileHash, source: 'download' });
      expect(narGets(blob)).toBe(2);
      figures.push(`run ${run + 1}: first byte ${onB.firstByteAt} ms after the kill`);
      a = await startInstance('a'); // back for the next run
      expect(
        await waitFor(async () => (await objectKeys()).some((k) => k.includes(blob.fileHash))),
      ).toBe(true);
      expect((await objectKeys()).filter((k) => k.includes(blob.fileHash))).toHaveLength(1);
    }
    expect(await counter(b, 'narwhal_lock_takeovers_total', 'nar')).toBe(
      takeoversBefore + TAKEOVER_RUNS,
    );
    console.log(`NAR takeover after kill -9 (lease ${LOCK_TTL}):\n  ${figures.join('\n  ')}`);
  });

  it('kill -9 of the instance looking a narinfo up: the other takes the lookup over at once', async () => {
    const f = await makeStorePath([key], { name: 'ha-narinfo-takeover' });
    upstream.publish(f);
    // The upstream holds a's lookup back: a holds the narinfo lock while it waits.
    upstream.set(`/${f.hash}.narinfo`, { kind: 'hang' });
    const onA = fetchText(`${a.url}/${f.hash}.narinfo`).catch(() => null);
    expect(
      await waitFor(
        async () => Promise.resolve(upstream.count('GET', `/${f.hash}.narinfo`) >= 1),
        5_000,
      ),
    ).toBe(true);
    await a.kill();
    const killedAt = Date.now();
    upstream.publish(f); // answers at once from now on
    const onB = await fetchText(`${b.url}/${f.hash}.narinfo`);
    const tookMs = Date.now() - killedAt;
    expect(onB.status).toBe(200);
    expect(onB.body).toContain(`StorePath: ${f.storePath}`);
    expect(await counter(b, 'narwhal_lock_takeovers_total', 'narinfo')).toBeGreaterThanOrEqual(1);
    console.log(`narinfo lookup taken over ${tookMs} ms after kill -9 (lease ${LOCK_TTL})`);
    await onA;
    a = await startInstance('a');
  });

  it('a holder paused past its lease: at most one extra download, no corrupt object, both serve the right bytes', async () => {
    const blob = await publishBlob('ha-paused');
    const narinfo = await fetchText(`${a.url}/${blob.hash}.narinfo`);
    const url = /^URL: (.*)$/m.exec(narinfo.body)![1];
    const t0 = Date.now();
    const onA = fetchBody(`${a.url}/${url}`, t0);
    expect(await waitFor(async () => Promise.resolve(narGets(blob) === 1), 5_000)).toBe(true);
    const lostBefore = await counter(a, 'narwhal_lock_lost_total', 'nar');

    a.signal('SIGSTOP'); // a GC pause, a frozen VM: alive, but renewing nothing
    const pausedAt = Date.now();
    // b waits out the lease (a is not gone: it may only be slow), then downloads itself.
    const onB = await fetchBody(`${b.url}/${url}`, t0);
    a.signal('SIGCONT');
    const pausedMs = Date.now() - pausedAt;

    expect({ status: onB.status, clean: onB.clean, sha256: onB.sha256 }).toEqual({
      status: 200,
      clean: true,
      sha256: blob.fileHash,
    });
    const fromA = await onA; // a resumes and finishes its own download too
    expect({ status: fromA.status, clean: fromA.clean, sha256: fromA.sha256 }).toEqual({
      status: 200,
      clean: true,
      sha256: blob.fileHash,
    });
    expect(narGets(blob), 'at most one extra download').toBeLessThanOrEqual(2);
    expect(await counter(a, 'narwhal_lock_lost_total', 'nar')).toBeGreaterThan(lostBefore);
    // One object, the right bytes, served as such by both.
    expect(
      await waitFor(async () => (await objectKeys()).some((k) => k.includes(blob.fileHash))),
    ).toBe(true);
    expect((await objectKeys()).filter((k) => k.includes(blob.fileHash))).toHaveLength(1);
    for (const n of [a, b]) {
      expect(
        await waitFor(async () => (await fetchBody(`${n.url}/${url}`, t0)).source === 'storage'),
      ).toBe(true);
      const stored = await fetchBody(`${n.url}/${url}`, t0);
      expect({
        source: stored.source,
        clean: stored.clean,
        bytes: stored.bytes,
        sha256: stored.sha256,
      }).toEqual({
        source: 'storage',
        clean: true,
        bytes: blob.file.length,
        sha256: blob.fileHash,
      });
    }
    console.log(`paused holder: b served the NAR after ${pausedMs} ms of a's pause`);
  });

  it('refuses the peer endpoint to callers that are not instances, while a download runs', async () => {
    const blob = await publishBlob('ha-peer-closed');
    const narinfo = await fetchText(`${a.url}/${blob.hash}.narinfo`);
    const url = /^URL: (.*)$/m.exec(narinfo.body)![1];
    const onA = fetchBody(`${a.url}/${url}`, Date.now());
    expect(await waitFor(async () => Promise.resolve(narGets(blob) === 1), 5_000)).toBe(true);
    const name = url.slice('nar/'.length);
    for (const headers of [{}, { authorization: 'Bearer not-the-secret' }]) {
      expect((await httpGet(`${a.url}/_narwhal/downloads/${name}`, { headers })).status).toBe(404);
    }
    // Instances themselves still stream from it.
    expect((await fetchBody(`${b.url}/${url}`, Date.now())).source).toBe('peer');
    expect((await onA).clean).toBe(true);
  });

  it('a narinfo deleted through one instance is not served from the memory of the other', async () => {
    const f = await makeStorePath([key], { name: 'ha-deleted' });
    upstream.publish(f);
    for (const n of [a, b])
      expect((await fetchText(`${n.url}/${f.hash}.narinfo`)).status).toBe(200);
    // b answers it from memory now (for up to 30 s); the upstream no longer has it.
    upstream.set(`/${f.hash}.narinfo`, { kind: 'status', status: 404 });
    const res = await fetch(`${a.url}/${f.hash}.narinfo`, { method: 'DELETE', headers: auth });
    expect(res.status).toBe(200);
    // The notice reaches b through Redis: it stops answering from memory long before its 30 s.
    const gone = await pollUntil(
      async () => (await fetchText(`${b.url}/${f.hash}.narinfo`)).status,
      (status) => status === 404,
      { timeoutMs: 10_000, intervalMs: 100 },
    );
    expect(gone).toBe(404);
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

/** GET of a small text body, with the test's token. */
async function fetchText(url: string): Promise<{ status: number; body: string }> {
  const res = await httpGet(url, { keepBody: true, headers: auth });
  return { status: res.status, body: res.body.toString('utf8') };
}

/** A counter's value for one `kind` label, from an instance's /metrics. */
async function counter(n: NarwhalProcess, name: string, kind: string): Promise<number> {
  const text = (await fetchText(`${n.url}/metrics`)).body;
  const m = new RegExp(`^${name}\\{kind="${kind}"\\} (\\d+)$`, 'm').exec(text);
  return Number(m?.[1] ?? NaN);
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
    headers: opts.range ? { ...auth, range: opts.range } : auth,
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
