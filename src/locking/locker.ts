/** Mutual exclusion by key: local to one process, or (later) across instances. */
export interface Lease {
  readonly key: string;
  /** Releases the lock if this lease still holds it; a no-op otherwise. */
  release(): Promise<void>;
  /** Pushes the expiry to now + ttl. Resolves false if the lease was lost. */
  extend(ttlMs: number): Promise<boolean>;
}

export interface Locker {
  /** Waits until the lock is free, then holds it for at most ttlMs (unless extended). */
  acquire(key: string, ttlMs: number): Promise<Lease>;
  /** Takes the lock if it is free right now, else resolves null. */
  tryAcquire(key: string, ttlMs: number): Promise<Lease | null>;
  close(): Promise<void>;
}

export const LOCKER = Symbol('LOCKER');

/** Runs `work` under the lock for `key`, keeping the lease alive while it runs. */
export async function withLock<T>(
  locker: Locker,
  key: string,
  ttlMs: number,
  work: () => Promise<T>,
): Promise<T> {
  const lease = await locker.acquire(key, ttlMs);
  const renew = setInterval(
    () => void lease.extend(ttlMs).catch(() => false),
    Math.max(50, ttlMs / 3),
  );
  renew.unref();
  try {
    return await work();
  } finally {
    clearInterval(renew);
    await lease.release();
  }
}
