import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { Cluster, Redis } from 'ioredis';
import type { RedisLockConfig } from '../../src/locking/redis/redis-locker';
import { freePort } from '../support/ports';

/**
 * The Redis servers the locking suites run against: the shared one (127.0.0.1:6379, or
 * NARWHAL_TEST_REDIS_ADDR), used with a fresh key prefix per run and never flushed, and private
 * `redis-server` processes (NARWHAL_TEST_REDIS_SERVER names another binary) that a test can stop
 * and start again on the same port.
 */

export type Retry = RedisLockConfig['retry'];

/** Small delays, so 50 contenders on one key finish quickly. */
export const FAST_RETRY: Retry = {
  maxAttempts: 100_000,
  initialDelayMs: 2,
  maxDelayMs: 20,
  jitter: 0.5,
};

export function redisLockConfig(
  addr: string,
  keyPrefix: string,
  retry: Partial<Retry> = {},
): RedisLockConfig {
  return {
    kind: 'redis',
    addrs: [addr],
    db: 0,
    tls: false,
    keyPrefix,
    allowDegraded: true,
    downloadTtlMs: 60_000,
    lruTtlMs: 60_000,
    retry: { ...FAST_RETRY, ...retry },
  };
}

export function freshPrefix(): string {
  return `narwhal-test:${randomBytes(6).toString('hex')}:`;
}

/** A plain client, for looking at the keys behind a locker's back. */
export function inspector(addr: string): Redis {
  const [host, port] = addr.split(':');
  return new Redis({ host, port: Number(port), lazyConnect: true, maxRetriesPerRequest: 0 });
}

/** Deletes every key under `prefix`, returning how many there were. */
export async function deletePrefix(client: Redis, prefix: string): Promise<number> {
  let cursor = '0';
  let deleted = 0;
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) deleted += await client.del(...keys);
  } while (cursor !== '0');
  return deleted;
}

/**
 * Outside CI a missing service skips the suites after a loud warning; on CI (`CI=true`) it fails
 * them: they must not silently disappear there.
 */
function skipOrFail(what: string, reason: string): null {
  if (process.env.CI === 'true') {
    throw new Error(`The Redis locking suites need ${what} (CI=true): ${reason}`);
  }
  console.warn(
    `\n*** SKIPPING Redis locking tests: ${what} is not available (${reason}).\n` +
      '*** On CI this is an error.\n',
  );
  return null;
}

/** The shared Redis, if it answers PING. */
export async function sharedRedisOrSkip(): Promise<string | null> {
  const addr = process.env.NARWHAL_TEST_REDIS_ADDR ?? '127.0.0.1:6379';
  const client = inspector(addr);
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.ping();
    return addr;
  } catch (e) {
    return skipOrFail(`Redis at ${addr}`, (e as Error).message);
  } finally {
    client.disconnect();
  }
}

/** A private `redis-server` (no persistence) on a free port, which can be stopped and restarted. */
export class RedisServerProcess {
  private child?: ChildProcess;

  private constructor(readonly port: number) {}

  get addr(): string {
    return `127.0.0.1:${this.port}`;
  }

  static async start(): Promise<RedisServerProcess> {
    const server = new RedisServerProcess(await freePort());
    await server.start();
    return server;
  }

  /** Starts (again) on the same port and waits until it answers PING. */
  async start(): Promise<void> {
    if (this.child) throw new Error('redis-server is already running');
    const child = spawn(
      process.env.NARWHAL_TEST_REDIS_SERVER ?? 'redis-server',
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      { stdio: 'ignore' },
    );
    this.child = child;
    // Not left behind if the test process ends without stopping it.
    const orphanGuard = () => child.kill('SIGKILL');
    process.once('exit', orphanGuard);
    child.once('exit', () => process.removeListener('exit', orphanGuard));
    const failed = Promise.race([
      once(child, 'error').then(([e]) => e as Error),
      once(child, 'exit').then(([code]) => new Error(`redis-server exited with ${String(code)}`)),
    ]);
    const ready = this.waitForPing();
    const outcome = await Promise.race([ready.then(() => null), failed]);
    if (outcome) {
      this.child = undefined;
      throw outcome;
    }
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
  }

  private waitForPing(): Promise<void> {
    return pingUntilUp(this.addr);
  }
}

/**
 * A private three-node Redis Cluster (three masters, no replicas, every slot covered), made of
 * `redis-server --cluster-enabled yes` processes joined with `redis-cli --cluster create`.
 */
export class RedisClusterProcess {
  private constructor(
    private readonly children: ChildProcess[],
    readonly addrs: string[],
    private readonly dir: string,
  ) {}

  static async start(): Promise<RedisClusterProcess> {
    const dir = await mkdtemp(join(tmpdir(), 'narwhal-redis-cluster-'));
    const children: ChildProcess[] = [];
    const addrs: string[] = [];
    const cluster = new RedisClusterProcess(children, addrs, dir);
    try {
      for (let i = 0; i < 3; i++) {
        const { child, addr } = await startClusterNode(dir);
        children.push(child);
        addrs.push(addr);
      }
      await promisify(execFile)('redis-cli', [
        '--cluster',
        'create',
        ...addrs,
        '--cluster-replicas',
        '0',
        '--cluster-yes',
      ]);
      await cluster.waitUntilOk();
      return cluster;
    } catch (e) {
      await cluster.stop();
      throw e;
    }
  }

  /** A cluster client, for looking at the keys behind a locker's back. */
  client(): Cluster {
    return new Cluster(
      this.addrs.map((a) => {
        const [host, port] = a.split(':');
        return { host, port: Number(port) };
      }),
      { redisOptions: { maxRetriesPerRequest: 0 } },
    );
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.children.map(async (child) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = once(child, 'exit');
        child.kill('SIGKILL');
        await exited;
      }),
    );
    await rm(this.dir, { recursive: true, force: true });
  }

  private async waitUntilOk(): Promise<void> {
    for (let i = 0; i < 200; i++) {
      const states = await Promise.all(
        this.addrs.map(async (addr) => {
          const client = inspector(addr);
          client.on('error', () => undefined);
          try {
            await client.connect();
            return /cluster_state:ok/.test(await client.cluster('INFO'));
          } catch {
            return false;
          } finally {
            client.disconnect();
          }
        }),
      );
      if (states.every(Boolean)) return;
      await sleep(50);
    }
    throw new Error(`Redis Cluster ${this.addrs.join(',')} never reached cluster_state:ok`);
  }
}

/** A private Redis Cluster, or null (after a warning) when it cannot be started outside CI. */
export async function redisClusterOrSkip(): Promise<RedisClusterProcess | null> {
  try {
    return await RedisClusterProcess.start();
  } catch (e) {
    return skipOrFail('a Redis Cluster (redis-server, redis-cli)', (e as Error).message);
  }
}

/**
 * One `redis-server --cluster-enabled yes` node on free ports, answering PING. A port from
 * freePort is free when asked, but another test running in parallel may bind it before the node
 * does; the node then exits at once, and is started again on other ports (up to five times).
 */
async function startClusterNode(dir: string): Promise<{ child: ChildProcess; addr: string }> {
  for (let attempt = 1; ; attempt++) {
    const [port, busPort] = [await freePort(), await freePort()];
    const child = spawn(
      process.env.NARWHAL_TEST_REDIS_SERVER ?? 'redis-server',
      [
        ...['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
        ...['--cluster-enabled', 'yes', '--cluster-port', String(busPort)],
        ...['--cluster-config-file', `nodes-${port}.conf`, '--cluster-node-timeout', '2000'],
        ...['--dir', dir],
      ],
      { stdio: 'ignore' },
    );
    const orphanGuard = () => child.kill('SIGKILL');
    process.once('exit', orphanGuard);
    child.once('exit', () => process.removeListener('exit', orphanGuard));
    const addr = `127.0.0.1:${port}`;
    const exited = once(child, 'exit').then(() => 'exited' as const);
    const up = pingUntilUp(addr).then(() => 'up' as const);
    up.catch(() => undefined); // still pinging when the node exited: settled, not unhandled
    const outcome = await Promise.race([up, exited]).catch((e: unknown) => {
      child.kill('SIGKILL');
      throw e;
    });
    if (outcome === 'up') return { child, addr };
    if (attempt >= 5)
      throw new Error(`redis-server (cluster node) exited at start ${attempt} times`);
  }
}

async function pingUntilUp(addr: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    // A fresh client each time: one whose first connect failed is left reconnecting.
    const client = inspector(addr);
    client.on('error', () => undefined);
    try {
      await client.connect();
      if ((await client.ping()) === 'PONG') return;
    } catch {
      await sleep(50);
    } finally {
      client.disconnect();
    }
  }
  throw new Error(`redis-server at ${addr} did not answer PING`);
}

/** A private redis-server, or null (after a warning) when it cannot be started outside CI. */
export async function redisServerOrSkip(): Promise<RedisServerProcess | null> {
  try {
    return await RedisServerProcess.start();
  } catch (e) {
    return skipOrFail('redis-server', (e as Error).message);
  }
}
