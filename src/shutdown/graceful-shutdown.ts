import type { LoggerService } from '@nestjs/common';
import type { Server, ServerResponse } from 'node:http';

/** What the shutdown needs of the application (a NestFastifyApplication has all of it). */
export interface Closable {
  /** The node:http server. */
  getHttpServer(): Server;
  /** Fastify: stops accepting connections; resolves once every connection has closed. */
  getHttpAdapter(): { getInstance(): { close(): PromiseLike<unknown> } };
  /** Nest: runs the shutdown hooks (locks released, pools and clients closed). */
  close(): Promise<void>;
}

export interface ShutdownOptions {
  /** How long responses in flight may take before their connections are closed. */
  timeoutMs: number;
  logger: LoggerService;
  /** Longest wait for Nest's shutdown hooks once the connections are gone. */
  hooksTimeoutMs?: number;
}

/** Idle keep-alive sockets are closed this often while responses drain. */
const IDLE_SWEEP_MS = 100;
const DEFAULT_HOOKS_TIMEOUT_MS = 10_000;

/**
 * Graceful stop on SIGTERM/SIGINT, in this order:
 * 1. stop accepting connections and close idle keep-alive ones at once (requests that still arrive on
 *    an open connection get 503 with `Connection: close`);
 * 2. let the responses in flight — NAR streams too — finish, closing each connection as its response
 *    ends, for up to `timeoutMs`; then cut the connections that remain (their clients see a broken
 *    body, never a clean truncated one);
 * 3. run Nest's shutdown hooks, bounded by `hooksTimeoutMs`.
 * A second signal skips the rest of the wait in step 2.
 */
export class GracefulShutdown {
  private readonly inFlight = new Set<ServerResponse>();
  private started?: Promise<number>;
  private forceNow?: () => void;

  constructor(
    private readonly app: Closable,
    private readonly options: ShutdownOptions,
  ) {
    // Counted from the start, to say how many responses a shutdown waits for.
    app.getHttpServer().on('request', (_req, res: ServerResponse) => {
      this.inFlight.add(res);
      res.once('close', () => this.inFlight.delete(res));
    });
  }

  /** Handles SIGTERM and SIGINT: shuts down, then exits with the code `run` returns. */
  installSignalHandlers(exit: (code: number) => void = (code) => process.exit(code)): void {
    const onSignal = (signal: NodeJS.Signals) => {
      void this.run(signal).then(exit);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  }

  /** Shuts down once (later calls force the drain to end and share the result): 0 when clean. */
  run(signal: string): Promise<number> {
    if (this.started) {
      this.options.logger.warn(
        `${signal} again: closing the remaining connections now`,
        'shutdown',
      );
      this.forceNow?.();
      return this.started;
    }
    this.started = this.shutdown(signal);
    return this.started;
  }

  private async shutdown(signal: string): Promise<number> {
    const { logger, timeoutMs } = this.options;
    const began = Date.now();
    const server = this.app.getHttpServer();
    logger.log(
      `${signal}: stopping; ${this.inFlight.size} response(s) in flight get up to ${timeoutMs} ms`,
      'shutdown',
    );

    const drained = Promise.resolve(this.app.getHttpAdapter().getInstance().close());
    const sweep = setInterval(() => server.closeIdleConnections(), IDLE_SWEEP_MS);
    let forced = false;
    const force = () => {
      if (forced) return;
      forced = true;
      if (this.inFlight.size > 0) {
        logger.warn(
          `closing ${this.inFlight.size} connection(s) with responses still in flight`,
          'shutdown',
        );
      }
      server.closeAllConnections();
    };
    this.forceNow = force;
    const deadline = setTimeout(force, timeoutMs);
    try {
      await drained;
    } finally {
      clearTimeout(deadline);
      clearInterval(sweep);
    }
    logger.log(`connections closed after ${Date.now() - began} ms`, 'shutdown');

    const hooksTimeoutMs = this.options.hooksTimeoutMs ?? DEFAULT_HOOKS_TIMEOUT_MS;
    let timer: NodeJS.Timeout | undefined;
    const hooksTimedOut = new Promise<'timeout'>((done) => {
      timer = setTimeout(() => done('timeout'), hooksTimeoutMs);
    });
    try {
      const outcome = await Promise.race([
        this.app.close().then(() => 'closed' as const),
        hooksTimedOut,
      ]);
      if (outcome === 'timeout') {
        logger.error(
          `shutdown hooks did not finish within ${hooksTimeoutMs} ms`,
          undefined,
          'shutdown',
        );
        return 1;
      }
    } catch (e) {
      logger.error(`shutdown failed: ${(e as Error).message}`, (e as Error).stack, 'shutdown');
      return 1;
    } finally {
      clearTimeout(timer);
    }
    logger.log(`stopped after ${Date.now() - began} ms`, 'shutdown');
    return 0;
  }
}
