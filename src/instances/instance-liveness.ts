import { Inject, Injectable, type OnApplicationShutdown } from '@nestjs/common';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { discard, HttpClient } from '../upstream/http-client';
import { BOOT_HEADER, INSTANCE, parseHolderInfo, type Instance } from './instance';

/** Errors that mean nothing listens there any more (the process is gone, or its host). */
const GONE_CODES = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EHOSTDOWN',
  'UND_ERR_CONNECT_TIMEOUT',
]);

/**
 * Tells whether the instance named in a lock's holder info still runs: its /healthz answers with the
 * same boot id. A refused connection (a killed process), an unreachable host, or another boot id (the
 * instance was restarted) means the lock's holder is gone; any other trouble is not proof of that.
 */
@Injectable()
export class InstanceLiveness implements OnApplicationShutdown {
  private readonly http: HttpClient;

  constructor(
    @Inject(APP_CONFIG) config: AppConfig,
    @Inject(INSTANCE) private readonly self: Instance,
  ) {
    // Short: this decides whether waiting clients wait on; a slow answer is treated as alive.
    this.http = new HttpClient(
      {
        connectMs: Math.min(1_000, config.upstreamTimeouts.connectMs),
        headersMs: 2_000,
        bodyMs: 2_000,
      },
      { keepAliveMs: 1_000 },
    );
  }

  async isGone(holderInfo: string): Promise<boolean> {
    const holder = parseHolderInfo(holderInfo);
    if (!holder?.boot) return false; // nothing to go by
    if (holder.url === this.self.url) return holder.boot !== this.self.boot; // our former self
    try {
      const res = await this.http.request(`${holder.url}/healthz`);
      await discard(res.body);
      const boot = res.headers[BOOT_HEADER];
      return typeof boot === 'string' && boot !== holder.boot;
    } catch (e) {
      const err = e as { code?: unknown; errors?: { code?: unknown }[] } | null;
      const code = err?.code ?? err?.errors?.[0]?.code; // AggregateError: several addresses
      return typeof code === 'string' && GONE_CODES.has(code);
    }
  }

  async onApplicationShutdown(): Promise<void> {
    await this.http.close();
  }
}
