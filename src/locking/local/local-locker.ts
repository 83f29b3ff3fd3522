import { randomUUID } from 'node:crypto';
import type { Lease, Locker, LockerStatus, LockHolder } from '../locker';

interface Holder {
  token: string;
  info: string;
  timer: NodeJS.Timeout;
}

interface Waiter {
  ttlMs: number;
  info: string;
  grant: (lease: Lease) => void;
}

/**
 * In-process locks with lease expiry. A released (or expired) lock is handed straight to the oldest
 * waiter, so waiters are served in arrival order and a newcomer cannot jump the queue.
 */
export class LocalLocker implements Locker {
  private readonly holders = new Map<string, Holder>();
  private readonly waiters = new Map<string, Waiter[]>();

  acquire(key: string, ttlMs: number, info = ''): Promise<Lease> {
    const lease = this.take(key, ttlMs, info);
    if (lease) return Promise.resolve(lease);
    return new Promise<Lease>((grant) => {
      const queue = this.waiters.get(key) ?? [];
      queue.push({ ttlMs, info, grant });
      this.waiters.set(key, queue);
    });
  }

  tryAcquire(key: string, ttlMs: number, info = ''): Promise<Lease | null> {
    return Promise.resolve(this.take(key, ttlMs, info));
  }

  holderInfo(key: string): Promise<string | null> {
    return Promise.resolve(this.holders.get(key)?.info ?? null);
  }

  holder(key: string): Promise<LockHolder | null> {
    const h = this.holders.get(key);
    return Promise.resolve(h ? { token: h.token, info: h.info } : null);
  }

  breakLease(key: string, token: string): Promise<boolean> {
    const held = this.holders.get(key)?.token === token;
    if (held) this.free(key, token);
    return Promise.resolve(held);
  }

  status(): LockerStatus {
    return { backend: 'local', healthy: true, degraded: false };
  }

  close(): Promise<void> {
    for (const h of this.holders.values()) clearTimeout(h.timer);
    this.holders.clear();
    this.waiters.clear();
    return Promise.resolve();
  }

  private take(key: string, ttlMs: number, info: string): Lease | null {
    if (this.holders.has(key) || this.waiters.has(key)) return null;
    return this.grant(key, ttlMs, info);
  }

  private grant(key: string, ttlMs: number, info: string): Lease {
    const token = randomUUID();
    this.holders.set(key, { token, info, timer: this.expiry(key, token, ttlMs) });
    return {
      key,
      release: () => {
        this.free(key, token);
        return Promise.resolve();
      },
      extend: (ms: number) => {
        const h = this.holders.get(key);
        if (!h || h.token !== token) return Promise.resolve(false);
        clearTimeout(h.timer);
        h.timer = this.expiry(key, token, ms);
        return Promise.resolve(true);
      },
    };
  }

  private expiry(key: string, token: string, ttlMs: number): NodeJS.Timeout {
    const t = setTimeout(() => this.free(key, token), ttlMs);
    t.unref();
    return t;
  }

  private free(key: string, token: string): void {
    const h = this.holders.get(key);
    if (!h || h.token !== token) return;
    clearTimeout(h.timer);
    this.holders.delete(key);
    const queue = this.waiters.get(key);
    const next = queue?.shift();
    if (queue && queue.length === 0) this.waiters.delete(key);
    if (next) next.grant(this.grant(key, next.ttlMs, next.info));
  }
}
