import { randomUUID } from 'node:crypto';
import type { Lease, Locker } from '../locker';

interface Holder {
  token: string;
  timer: NodeJS.Timeout;
}

/** In-process locks with lease expiry; waiters are woken in arrival order. */
export class LocalLocker implements Locker {
  private readonly holders = new Map<string, Holder>();
  private readonly waiters = new Map<string, Array<() => void>>();

  async acquire(key: string, ttlMs: number): Promise<Lease> {
    for (;;) {
      const lease = this.take(key, ttlMs);
      if (lease) return lease;
      await new Promise<void>((wake) => {
        const queue = this.waiters.get(key) ?? [];
        queue.push(wake);
        this.waiters.set(key, queue);
      });
    }
  }

  tryAcquire(key: string, ttlMs: number): Promise<Lease | null> {
    return Promise.resolve(this.take(key, ttlMs));
  }

  close(): Promise<void> {
    for (const h of this.holders.values()) clearTimeout(h.timer);
    this.holders.clear();
    for (const queue of this.waiters.values()) queue.splice(0).forEach((wake) => wake());
    return Promise.resolve();
  }

  private take(key: string, ttlMs: number): Lease | null {
    if (this.holders.has(key)) return null;
    const token = randomUUID();
    this.holders.set(key, { token, timer: this.expiry(key, token, ttlMs) });
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
    next?.();
  }
}
