import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Cluster, Redis, ReplyError, type RedisOptions } from 'ioredis';
import type { LockConfig } from '../../config/app-config';
import { LockTimeoutError } from '../../common/errors';
import type { Lease, Locker, LockerStatus, LockHolder } from '../locker';

export type RedisLockConfig = Extract<LockConfig, { kind: 'redis' }>;

/**
 * Redis could not be asked: not connected, the connection dropped mid-command, a command timed out,
 * or the server refuses to serve (loading, read-only replica, cluster down, bad credentials). Lock
 * contention is never this error; callers may fall back to in-process locks when they see it.
 */
export class RedisUnavailableError extends Error {
  override name = 'RedisUnavailableError';
}

/** Deletes the key only if it still holds this lease's value. */
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`;

/** Pushes the expiry out only if the key still holds this lease's value. */
const EXTEND = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`;

interface LockScripts {
  narwhalLockRelease(key: string, value: string): Promise<number>;
  narwhalLockExtend(key: string, value: string, ttlMs: number): Promise<number>;
}
type Client = (Redis | Cluster) & LockScripts;

/** Server replies that mean "this server cannot serve us now", not "you asked wrongly". */
const UNAVAILABLE_REPLIES =
  /^(LOADING|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|READONLY|NOAUTH|WRONGPASS|NOPERM)\b/;

const CONNECT_TIMEOUT_MS = 2_000;
/** Bounds a command on a connection that is up but silent (a paused server, a dropped network). */
const COMMAND_TIMEOUT_MS = 2_000;
const RECONNECT_MAX_DELAY_MS = 2_000;

export type ConnectionListener = (up: boolean, detail: string) => void;

/**
 * Locks shared by every instance through Redis (one node, or a cluster when several addresses are
 * given). A lock is the key `<keyPrefix><key>` holding `{"t":token,"i":info}`, set with NX and a
 * TTL; only a lease whose value is still stored can release or extend it (compared inside a Lua
 * script, so check and change are one step).
 *
 * Commands fail at once while Redis is unreachable (no offline queue, no resend after a drop) with
 * `RedisUnavailableError`, so callers can fall back; the client keeps reconnecting in the background
 * and picks Redis up again when it returns.
 */
export class RedisLocker implements Locker {
  private readonly client: Client;
  private readonly where: string;
  private readonly listeners: ConnectionListener[] = [];
  /** Settles once the first connection attempt has succeeded or failed. */
  private readonly firstAttempt: Promise<void>;
  private lastError = '';
  private closing = false;

  constructor(private readonly config: RedisLockConfig) {
    this.where = config.addrs.join(',');
    this.client = createClient(config);
    this.client.defineCommand('narwhalLockRelease', { numberOfKeys: 1, lua: RELEASE });
    this.client.defineCommand('narwhalLockExtend', { numberOfKeys: 1, lua: EXTEND });

    this.client.on('error', (e: Error) => {
      this.lastError = e.message;
    });
    this.client.on('ready', () => {
      this.lastError = '';
      this.notify(true);
    });
    this.client.on('close', () => {
      if (!this.closing) this.notify(false);
    });
    this.firstAttempt = new Promise<void>((settle) => {
      const timer = setTimeout(settle, CONNECT_TIMEOUT_MS);
      timer.unref();
      const done = () => {
        clearTimeout(timer);
        settle();
      };
      this.client.once('ready', done);
      this.client.once('close', done);
      this.client.once('end', done);
    });
  }

  /** Called with `true` when the connection becomes ready, `false` whenever it closes. */
  onConnectionChange(listener: ConnectionListener): void {
    this.listeners.push(listener);
  }

  async acquire(key: string, ttlMs: number, info = ''): Promise<Lease> {
    const { maxAttempts, initialDelayMs, maxDelayMs, jitter } = this.config.retry;
    for (let attempt = 0; ; attempt++) {
      const lease = await this.tryAcquire(key, ttlMs, info);
      if (lease) return lease;
      if (attempt + 1 >= maxAttempts) break;
      const base = Math.min(initialDelayMs * 2 ** attempt, maxDelayMs);
      await sleep(Math.max(0, base * (1 + jitter * (2 * Math.random() - 1))));
    }
    throw new LockTimeoutError(
      `lock "${key}" is still held after ${maxAttempts} attempt${maxAttempts === 1 ? '' : 's'}`,
    );
  }

  async tryAcquire(key: string, ttlMs: number, info = ''): Promise<Lease | null> {
    const redisKey = this.config.keyPrefix + key;
    const value = JSON.stringify({ t: randomBytes(16).toString('hex'), i: info });
    const set = await this.send(
      () => this.client.set(redisKey, value, 'PX', ms(ttlMs), 'NX'),
      () => {
        // The SET may still run after a timeout; queued behind it on the same connection, this
        // takes back a lock nobody would know it holds. Best effort: it fails if the link is down.
        void this.client.narwhalLockRelease(redisKey, value).catch(() => 0);
      },
    );
    if (set !== 'OK') return null;
    return {
      key,
      release: async () => {
        await this.send(() => this.client.narwhalLockRelease(redisKey, value));
      },
      extend: async (extendMs: number) =>
        (await this.send(() => this.client.narwhalLockExtend(redisKey, value, ms(extendMs)))) === 1,
    };
  }

  async holderInfo(key: string): Promise<string | null> {
    return (await this.holder(key))?.info ?? null;
  }

  /** The holder; its token is the whole stored value (what the scripts compare). */
  async holder(key: string): Promise<LockHolder | null> {
    const value = await this.send(() => this.client.get(this.config.keyPrefix + key));
    if (value === null) return null;
    try {
      const parsed: unknown = JSON.parse(value);
      if (parsed && typeof parsed === 'object' && 'i' in parsed && typeof parsed.i === 'string') {
        return { token: value, info: parsed.i };
      }
    } catch {
      // Held by something that does not write our format: held, with nothing to tell.
    }
    return { token: value, info: '' };
  }

  async breakLease(key: string, token: string): Promise<boolean> {
    const redisKey = this.config.keyPrefix + key;
    return (await this.send(() => this.client.narwhalLockRelease(redisKey, token))) === 1;
  }

  status(): LockerStatus {
    const healthy = this.client.status === 'ready';
    return {
      backend: 'redis',
      healthy,
      degraded: false,
      detail: healthy ? undefined : this.downDetail(),
    };
  }

  async close(): Promise<void> {
    this.closing = true;
    if (this.client.status === 'ready') {
      try {
        await this.client.quit();
        return;
      } catch {
        // fall through: drop the connection instead
      }
    }
    this.client.disconnect();
  }

  /**
   * Runs one command, turning "Redis cannot be asked" into RedisUnavailableError. `unsure` runs when
   * the command was sent but its outcome is unknown.
   */
  private async send<T>(command: () => Promise<T>, unsure?: () => void): Promise<T> {
    await this.firstAttempt;
    if (this.client.status !== 'ready') throw new RedisUnavailableError(this.downDetail());
    try {
      return await command();
    } catch (e) {
      if (!isUnavailable(e)) throw e;
      unsure?.();
      throw new RedisUnavailableError(`Redis at ${this.where}: ${(e as Error).message}`, {
        cause: e,
      });
    }
  }

  private downDetail(): string {
    const why = this.lastError ? `: ${this.lastError}` : '';
    return `Redis at ${this.where} is ${this.client.status}${why}`;
  }

  private notify(up: boolean): void {
    const detail = up ? `Redis at ${this.where} is ready` : this.downDetail();
    for (const listener of this.listeners) listener(up, detail);
  }
}

/** Anything but a server reply is a connection problem; some replies are too. */
function isUnavailable(e: unknown): boolean {
  if (!(e instanceof Error)) return false;
  if (e instanceof (ReplyError as typeof Error)) return UNAVAILABLE_REPLIES.test(e.message);
  return true;
}

/** Redis wants whole, positive milliseconds. */
function ms(ttlMs: number): number {
  return Math.max(1, Math.ceil(ttlMs));
}

function hostPort(addr: string): { host: string; port: number } {
  const colon = addr.lastIndexOf(':');
  return {
    host: addr.slice(0, colon).replace(/^\[(.*)\]$/, '$1'),
    port: Number(addr.slice(colon + 1)),
  };
}

/** A client for `config` (one node, or a cluster); commands fail at once while disconnected. */
export function createClient(
  config: RedisLockConfig,
  options: { connectionName?: string } = {},
): Client {
  const common: RedisOptions = {
    username: config.username,
    password: config.password,
    tls: config.tls ? {} : undefined,
    connectionName: options.connectionName ?? 'narwhal-locker',
    connectTimeout: CONNECT_TIMEOUT_MS,
    commandTimeout: COMMAND_TIMEOUT_MS,
    // Fail a command as soon as its connection drops instead of resending it after a reconnect.
    maxRetriesPerRequest: 0,
  };
  const reconnect = (times: number) => Math.min(times * 100, RECONNECT_MAX_DELAY_MS);
  if (config.addrs.length === 1) {
    return new Redis({
      ...common,
      ...hostPort(config.addrs[0]),
      db: config.db,
      enableOfflineQueue: false,
      retryStrategy: reconnect,
    }) as Client;
  }
  if (config.db !== 0) {
    throw new Error(
      'Redis Cluster has only database 0; --cache-redis-db must be 0 with several addresses',
    );
  }
  return new Cluster(config.addrs.map(hostPort), {
    redisOptions: common,
    enableOfflineQueue: false,
    clusterRetryStrategy: reconnect,
  }) as Client;
}
