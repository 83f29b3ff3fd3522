import { Logger } from '@nestjs/common';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { LocalLocker } from '../../src/locking/local/local-locker';
import { withLock, type Lease } from '../../src/locking/locker';
import { DegradableLocker } from '../../src/locking/redis/degradable-locker';
import { RedisLocker, RedisUnavailableError } from '../../src/locking/redis/redis-locker';
import { NarwhalProcess } from '../support/narwhal-process';
import { lockerContract } from './locker.contract';
import {
  deletePrefix,
  freshPrefix,
  inspector,
  redisClusterOrSkip,
  redisLockConfig,
  redisServerOrSkip,
  sharedRedisOrSkip,
  type RedisClusterProcess,
  type RedisServerProcess,
} from './redis-servers';

// The same contract, unchanged, against every Locker implementation.

lockerContract('LocalLocker', {
  make: () => {
    const locker = new LocalLocker();
    return Promise.resolve({ locker, cleanup: () => locker.close() });
  },
  givesUp: false,
});

describe('Redis (shared server)', () => {
  // The shared Redis, under a key prefix of its own for this run; the keys are removed afterwards.
  let redisAddr: string | null = null;
  const prefix = freshPrefix();
  beforeAll(async () => {
    redisAddr = await sharedRedisOrSkip();
  });
  afterAll(async () => {
    if (!redisAddr) return;
    const client = inspector(redisAddr);
    try {
      await client.connect();
      await deletePrefix(client, prefix);
    } finally {
      client.disconnect();
    }
  });
  beforeEach((context) => {
    if (!redisAddr) context.skip();
  });

  const config = (retry?: Parameters<typeof redisLockConfig>[2]) =>
    redisLockConfig(redisAddr ?? '', prefix, retry);

  lockerContract('RedisLocker', {
    make: (retry) => {
      const locker = new RedisLocker(config(retry));
      return Promise.resolve({ locker, cleanup: () => locker.close() });
    },
    givesUp: true,
  });

  lockerContract('DegradableLocker over Redis', {
    make: (retry) => {
      const locker = new DegradableLocker(new RedisLocker(config(retry)), new LocalLocker(), true);
      return Promise.resolve({
        locker,
        cleanup: async () => {
          // Redis was up all along: nothing may have gone to the local locker.
          expect(locker.degradedOperations).toBe(0);
          expect(locker.status()).toEqual({ backend: 'redis', healthy: true, degraded: false });
          await locker.close();
        },
      });
    },
    givesUp: true,
  });

  it('stores the lock under the key prefix, with a TTL, and removes it on release', async () => {
    const locker = new RedisLocker(config());
    const client = inspector(redisAddr ?? '');
    try {
      await client.connect();
      const lease = await locker.acquire('layout', 10_000, 'http://a:8501');
      const stored = await client.get(`${prefix}layout`);
      const value = JSON.parse(stored ?? 'null') as { t: unknown; i: unknown };
      expect(Object.keys(value).sort()).toEqual(['i', 't']);
      expect(value.t).toMatch(/^[0-9a-f]{32}$/);
      expect(value.i).toBe('http://a:8501');
      const ttl = await client.pttl(`${prefix}layout`);
      expect(ttl).toBeGreaterThan(9_000);
      expect(ttl).toBeLessThanOrEqual(10_000);
      expect(await lease.extend(30_000)).toBe(true);
      expect(await client.pttl(`${prefix}layout`)).toBeGreaterThan(29_000);
      await lease.release();
      expect(await client.exists(`${prefix}layout`)).toBe(0);
    } finally {
      client.disconnect();
      await locker.close();
    }
  });

  it('reports a key held by something else as held, with empty info', async () => {
    const locker = new RedisLocker(config());
    const client = inspector(redisAddr ?? '');
    try {
      await client.connect();
      await client.set(`${prefix}foreign`, 'not ours', 'PX', 10_000);
      expect(await locker.holderInfo('foreign')).toBe('');
      expect(await locker.tryAcquire('foreign', 1_000)).toBeNull();
    } finally {
      client.disconnect();
      await locker.close();
    }
  });
});

describe('Redis Cluster (three private nodes)', () => {
  let cluster: RedisClusterProcess | null = null;
  beforeAll(async () => {
    cluster = await redisClusterOrSkip();
  }, 60_000);
  afterAll(async () => {
    await cluster?.stop();
  });
  beforeEach((context) => {
    if (!cluster) context.skip();
  });

  // Several addresses select the cluster client; the lock scripts touch one key each, so they run
  // on whichever node owns that key's slot.
  const config = (prefix: string, retry?: Parameters<typeof redisLockConfig>[2]) => ({
    ...redisLockConfig('', prefix, retry),
    addrs: cluster?.addrs ?? [],
  });

  const prefix = freshPrefix();
  lockerContract('RedisLocker on a Redis Cluster', {
    make: (retry) => {
      const locker = new RedisLocker(config(prefix, retry));
      return Promise.resolve({ locker, cleanup: () => locker.close() });
    },
    givesUp: true,
  });

  it('spreads locks over the masters and removes each from its own node on release', async () => {
    const own = freshPrefix();
    const locker = new RedisLocker(config(own));
    const keysPerNode = async () =>
      Promise.all(
        cluster!.addrs.map(async (addr) => {
          const node = inspector(addr);
          try {
            await node.connect();
            return (await node.keys(`${own}*`)).length;
          } finally {
            node.disconnect();
          }
        }),
      );
    try {
      const leases = await Promise.all(
        Array.from({ length: 30 }, (_, i) => locker.acquire(`nar:${i}`, 10_000, `http://i${i}`)),
      );
      const counts = await keysPerNode();
      expect(counts.reduce((a, b) => a + b, 0)).toBe(30);
      expect(counts.filter((n) => n > 0).length).toBeGreaterThan(1);
      expect(await locker.holderInfo('nar:7')).toBe('http://i7');
      await Promise.all(leases.map((l) => l.release()));
      expect(await keysPerNode()).toEqual([0, 0, 0]);
    } finally {
      await locker.close();
    }
  });
  it('narwhal serve with several --cache-redis-addrs is ready on the cluster, not degraded', async () => {
    const dataPath = await mkdtemp(join(tmpdir(), 'narwhal-cluster-'));
    const narwhal = await NarwhalProcess.start({
      dataPath,
      upstreamUrls: ['http://127.0.0.1:9'], // never asked: only readiness is looked at
      upstreamPublicKeys: ['up-1:' + Buffer.alloc(32).toString('base64')],
      env: { CACHE_LOCK_BACKEND: 'redis', CACHE_REDIS_ADDRS: cluster!.addrs.join(',') },
    });
    try {
      const res = await fetch(`${narwhal.url}/readyz`);
      const body = (await res.json()) as {
        details: Record<string, { status: string; backend?: string; degraded?: boolean }>;
      };
      expect(res.status).toBe(200);
      expect(body.details.lock).toMatchObject({ status: 'up', backend: 'redis', degraded: false });
    } finally {
      await narwhal.kill();
      await rm(dataPath, { recursive: true, force: true });
    }
  });
});

describe('Redis going away and coming back (private redis-server)', () => {
  // A redis-server of our own, which the tests stop and start again on the same port.
  let server: RedisServerProcess | null = null;
  let addr = '';
  beforeAll(async () => {
    server = await redisServerOrSkip();
    addr = server?.addr ?? '';
  });
  afterAll(async () => {
    await server?.stop();
  });
  const leases: Lease[] = [];
  let warn: ReturnType<typeof vi.spyOn>;
  let log: ReturnType<typeof vi.spyOn>;
  let error: ReturnType<typeof vi.spyOn>;

  beforeAll(() => {
    warn = vi.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
    log = vi.spyOn(Logger.prototype, 'log').mockImplementation(() => undefined);
    error = vi.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
  });
  beforeEach(async (context) => {
    if (!server) return context.skip();
    await server.start().catch((e: Error) => {
      if (!/already running/.test(e.message)) throw e;
    });
    warn.mockClear();
    log.mockClear();
    error.mockClear();
  });
  afterEach(async () => {
    for (const lease of leases.splice(0)) await lease.release();
  });
  afterAll(() => {
    vi.restoreAllMocks();
  });

  const degradable = (allowDegraded: boolean) =>
    new DegradableLocker(
      new RedisLocker({ ...redisLockConfig(addr, freshPrefix()), allowDegraded }),
      new LocalLocker(),
      allowDegraded,
    );

  it('falls back to local locks while Redis is down and returns to Redis when it is back', async () => {
    const locker = degradable(true);
    const client = inspector(addr);
    client.on('error', () => undefined);
    try {
      const before = await locker.acquire('before', 60_000, 'on redis');
      expect(locker.status()).toEqual({ backend: 'redis', healthy: true, degraded: false });

      await server?.stop();
      await until(() => locker.status().degraded);
      expect(locker.status()).toMatchObject({ backend: 'redis', healthy: true, degraded: true });
      expect(locker.status().detail).toMatch(/in-process locks/);

      // Locks are still granted, and still exclusive, locally.
      const a = await locker.acquire('k', 60_000, 'local holder');
      expect(await locker.tryAcquire('k', 60_000)).toBeNull();
      expect(await locker.holderInfo('k')).toBe('local holder');
      const b = await locker.tryAcquire('other', 60_000);
      expect(b).not.toBeNull();
      const waiter = locker.acquire('k', 60_000, 'next');
      await a.release();
      const next = await waiter;
      expect(await locker.holderInfo('k')).toBe('next');
      await withLock(locker, 'work', 200, () => Promise.resolve('ok'));

      // The Redis lease cannot be renewed (it is as good as lost), and releasing it does not throw.
      expect(await before.extend(60_000)).toBe(false);
      await before.release();
      expect(locker.degradedOperations).toBe(8);
      await b?.release();
      await next.release();

      // One warning for the whole outage.
      expect(warn).toHaveBeenCalledTimes(1);
      expect(String(warn.mock.calls[0]?.[0])).toMatch(/degraded mode/);
      expect(log).not.toHaveBeenCalled();

      // Same port, same locker: it reconnects on its own.
      await server?.start();
      await until(() => !locker.status().degraded, 10_000);
      expect(locker.status()).toEqual({ backend: 'redis', healthy: true, degraded: false });
      expect(log).toHaveBeenCalledTimes(1);
      expect(String(log.mock.calls[0]?.[0])).toMatch(/reachable again/);

      const counted = locker.degradedOperations;
      const after = await locker.acquire('after', 60_000, 'back on redis');
      leases.push(after);
      await client.connect();
      const keys = await client.keys('narwhal-test:*after');
      expect(keys).toHaveLength(1);
      expect(JSON.parse((await client.get(keys[0] ?? '')) ?? 'null')).toMatchObject({
        i: 'back on redis',
      });
      expect(locker.degradedOperations).toBe(counted);
      expect(warn).toHaveBeenCalledTimes(1);
      await after.release();
      leases.length = 0;
      expect(await client.keys('narwhal-test:*after')).toHaveLength(0);
    } finally {
      client.disconnect();
      await locker.close();
    }
  });

  it('waits for a lease taken locally during the outage before taking the key on Redis', async () => {
    const locker = degradable(true);
    try {
      await until(() => locker.status().healthy && !locker.status().degraded);
      await server?.stop();
      await until(() => locker.status().degraded);
      const local = await locker.acquire('overlap', 60_000, 'degraded work');

      await server?.start();
      await until(() => !locker.status().degraded, 10_000);
      expect(await locker.tryAcquire('overlap', 60_000)).toBeNull();
      expect(await locker.holderInfo('overlap')).toBe('degraded work');
      let entered = false;
      const onRedis = locker.acquire('overlap', 60_000, 'redis work').then((lease) => {
        entered = true;
        return lease;
      });
      await new Promise((r) => setTimeout(r, 100));
      expect(entered).toBe(false);
      await local.release();
      const lease = await onRedis;
      expect(await locker.holderInfo('overlap')).toBe('redis work');
      await lease.release();
    } finally {
      await locker.close();
    }
  });

  it('fails lock operations fast while Redis is down when degraded mode is off', async () => {
    const locker = degradable(false);
    try {
      await until(() => locker.status().healthy);
      await server?.stop();
      await until(() => !locker.status().healthy);
      expect(locker.status()).toMatchObject({ backend: 'redis', healthy: false, degraded: false });

      const start = Date.now();
      await expect(locker.acquire('k', 10_000)).rejects.toBeInstanceOf(RedisUnavailableError);
      await expect(locker.tryAcquire('k', 10_000)).rejects.toBeInstanceOf(RedisUnavailableError);
      await expect(locker.holderInfo('k')).rejects.toBeInstanceOf(RedisUnavailableError);
      expect(Date.now() - start).toBeLessThan(500);
      expect(locker.degradedOperations).toBe(0);
      expect(error).toHaveBeenCalledTimes(1);
      expect(warn).not.toHaveBeenCalled();

      await server?.start();
      await until(() => locker.status().healthy, 10_000);
      const lease = await locker.acquire('k', 10_000);
      await lease.release();
    } finally {
      await locker.close();
    }
  });

  it('makes a plain RedisLocker fail fast, not hang, while Redis is down', async () => {
    const locker = new RedisLocker(redisLockConfig(addr, freshPrefix()));
    try {
      const lease = await locker.acquire('k', 10_000);
      await server?.stop();
      await until(() => !locker.status().healthy);
      const start = Date.now();
      await expect(locker.acquire('k2', 10_000)).rejects.toBeInstanceOf(RedisUnavailableError);
      await expect(lease.extend(10_000)).rejects.toBeInstanceOf(RedisUnavailableError);
      await expect(lease.release()).rejects.toBeInstanceOf(RedisUnavailableError);
      expect(Date.now() - start).toBeLessThan(500);
      expect(locker.status()).toMatchObject({ backend: 'redis', healthy: false });
      expect(locker.status().detail).toContain(addr);
    } finally {
      await locker.close();
    }
  });

  it('never puts the password in status or errors', async () => {
    const password = 'hunter2-very-secret';
    const admin = inspector(addr);
    await admin.connect();
    await admin.config('SET', 'requirepass', 'the-right-one');
    admin.disconnect();
    const locker = new RedisLocker({ ...redisLockConfig(addr, freshPrefix()), password });
    try {
      // AUTH fails (WRONGPASS): the connection never becomes ready.
      const failure = await locker.acquire('k', 1_000).then(
        () => null,
        (e: Error) => e,
      );
      expect(failure).toBeInstanceOf(RedisUnavailableError);
      expect(failure?.message).toMatch(/WRONGPASS/);
      expect(failure?.message).not.toContain(password);
      expect(JSON.stringify(locker.status())).not.toContain(password);
    } finally {
      await locker.close();
      await server?.stop(); // the next start is without requirepass
    }
  });
});

/** Polls `condition` every 20 ms until it holds, failing after `timeoutMs`. */
async function until(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
