import { Injectable, Logger, type OnApplicationShutdown } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { isDatabaseOutage } from './outage';

/** How often the database is tried while it is known to be down. */
const PROBE_MS = 2_000;

/**
 * Whether the database can be reached, as learned from failing queries: the first outage error is
 * logged once (not once per request), then a probe tries the database every 2 s until it answers,
 * which is logged once too. Requests meanwhile are served from what needs no database, or answered
 * 503 with Retry-After.
 */
@Injectable()
export class DatabaseHealth implements OnApplicationShutdown {
  private readonly logger = new Logger('database');
  private timer?: NodeJS.Timeout;

  constructor(private readonly ds: DataSource) {}

  /** False from the first outage error until the database answers again. */
  get available(): boolean {
    return this.timer === undefined;
  }

  /** Notes an error from a query; returns whether it is an outage. */
  noteFailure(e: unknown): boolean {
    if (!isDatabaseOutage(e)) return false;
    if (this.timer) return true;
    const err = e as { code?: unknown; message?: unknown; driverError?: { code?: unknown } };
    const why = String(err.code ?? err.driverError?.code ?? err.message ?? e);
    this.logger.warn(`the database is unreachable (${why}); serving what needs no database`);
    this.timer = setInterval(() => void this.probe(), PROBE_MS);
    this.timer.unref();
    return true;
  }

  onApplicationShutdown(): void {
    clearInterval(this.timer);
  }

  private async probe(): Promise<void> {
    try {
      await this.ds.query('SELECT 1');
    } catch {
      return;
    }
    if (!this.timer) return;
    clearInterval(this.timer);
    this.timer = undefined;
    this.logger.log('the database is reachable again');
  }
}
