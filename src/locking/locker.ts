/** Mutual exclusion by key: local to one process (LocalLocker) or across instances (RedisLocker). */
export interface Lease {
  readonly key: string;
  /** Releases the lock if this lease still holds it; a no-op otherwise. */
  release(): Promise<void>;
  /** Pushes the expiry to now + ttl. Resolves false if the lease was lost. */
  extend(ttlMs: number): Promise<boolean>;
}

/** Who holds a lock: the lease's token (opaque) and the info the holder gave. */
export interface LockHolder {
  token: string;
  info: string;
}

export interface LockerStatus {
  backend: 'local' | 'redis';
  /** False when the backend cannot be reached (and degraded mode is off, or not possible). */
  healthy: boolean;
  /** True while a distributed locker falls back to in-process locks. */
  degraded: boolean;
  detail?: string;
}

export interface Locker {
  /**
   * Waits until the lock is free, then holds it for at most ttlMs (unless extended). `info` is what
   * other contenders see through `holderInfo` while this lease holds (e.g. the holder's URL).
   */
  acquire(key: string, ttlMs: number, info?: string): Promise<Lease>;
  /** Takes the lock if it is free right now, else resolves null. */
  tryAcquire(key: string, ttlMs: number, info?: string): Promise<Lease | null>;
  /** The `info` of the current holder of `key` ('' if it gave none), or null if the lock is free. */
  holderInfo(key: string): Promise<string | null>;
  /** The current holder of `key`, or null if the lock is free. */
  holder(key: string): Promise<LockHolder | null>;
  /**
   * Takes the lock away from the holder whose lease has `token`, if it still holds it (for a holder
   * known to be gone); resolves whether it did. The lock is then free for anyone.
   */
  breakLease(key: string, token: string): Promise<boolean>;
  status(): LockerStatus;
  close(): Promise<void>;
}

export const LOCKER = Symbol('LOCKER');

/** Runs `work` under the lock for `key`, keeping the lease alive while it runs. */
export async function withLock<T>(
  locker: Locker,
  key: string,
  ttlMs: number,
  work: () => Promise<T>,
  info?: string,
): Promise<T> {
  const lease = await locker.acquire(key, ttlMs, info);
  const stop = keepAlive(lease, ttlMs);
  try {
    return await work();
  } finally {
    stop();
    await lease.release();
  }
}

/** Renews `lease` every third of its TTL until the returned function is called. */
export function keepAlive(lease: Lease, ttlMs: number, onLost?: () => void): () => void {
  const timer = setInterval(
    () => {
      lease.extend(ttlMs).then(
        (kept) => {
          if (!kept) onLost?.();
        },
        () => undefined, // a failed renewal is retried at the next tick
      );
    },
    Math.max(50, ttlMs / 3),
  );
  timer.unref();
  return () => clearInterval(timer);
}
