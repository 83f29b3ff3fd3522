import type { NestFastifyApplication } from '@nestjs/platform-fastify';
import Database from 'better-sqlite3';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll } from 'vitest';
import { createApp, createLogger } from '../../src/bootstrap';
import { buildConfig, type RawSettings } from '../../src/config/app-config';
import type { NarInfo } from '../../src/nix/narinfo';
import type { FakeUpstream } from './fake-upstream';
import { readOrNull, snapshot } from './files';
import { eventually } from './wait';

/**
 * narwhal built in-process with createApp(config) — SQLite and the filesystem store in a temporary
 * data path — for the module tests, which drive it through Fastify `inject` and, after listen(),
 * over a real socket.
 */

/** `--cache-hostname`: the name of narwhal's own signing key. */
export const HOSTNAME = 'narwhal-test';

export interface NarwhalOptions {
  /**
   * Keep every log line, from debug up, parsed in `lines` (instead of logging at the configured
   * level to stdout).
   */
  captureLogs?: boolean;
}

export class Narwhal {
  /** Every log line written so far, parsed (with `captureLogs` only). */
  readonly lines: Record<string, unknown>[] = [];
  private running: { app: NestFastifyApplication; dataPath: string } | undefined;
  private listening: AddressInfo | undefined;

  /**
   * Not started yet (see start). `settings` are read at start, so they may name upstreams that
   * only listen by then; the data path, hostname and log level `error` are set unless given.
   */
  constructor(
    private readonly settings: () => RawSettings,
    private readonly options: NarwhalOptions = {},
  ) {}

  async start(): Promise<void> {
    const dataPath = await mkdtemp(join(tmpdir(), 'narwhal-module-'));
    const config = buildConfig(
      {
        'cache-data-path': dataPath,
        'cache-hostname': HOSTNAME,
        'log-level': 'error',
        ...this.settings(),
      },
      dataPath,
    );
    const app = this.options.captureLogs
      ? await createApp(
          config,
          createLogger('debug', {
            pretty: false,
            destination: {
              write: (line: string) =>
                void this.lines.push(JSON.parse(line) as Record<string, unknown>),
            },
          }),
        )
      : await createApp(config);
    this.running = { app, dataPath };
    await app.init();
    await app.getHttpAdapter().getInstance().ready();
  }

  get app(): NestFastifyApplication {
    return this.started().app;
  }

  get dataPath(): string {
    return this.started().dataPath;
  }

  /** Storage root: `<dataPath>/store` (objects in nar/, spools in tmp/). */
  get storeRoot(): string {
    return join(this.dataPath, 'store');
  }

  /** Listens on 127.0.0.1 too (random port), for what inject cannot show. */
  async listen(): Promise<void> {
    await this.app.listen(0, '127.0.0.1');
    this.listening = this.app.getHttpServer().address() as AddressInfo;
  }

  get port(): number {
    if (!this.listening) throw new Error('narwhal is not listening (see listen)');
    return this.listening.port;
  }

  /** `http://127.0.0.1:<port>`, once listening. */
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async close(): Promise<void> {
    if (!this.running) return;
    const { app, dataPath } = this.running;
    this.running = undefined;
    await app.close();
    await rm(dataPath, { recursive: true, force: true });
  }

  private started(): { app: NestFastifyApplication; dataPath: string } {
    if (!this.running) throw new Error('narwhal is not started');
    return this.running;
  }
}

/** A started narwhal with these settings (see Narwhal). */
export async function startNarwhal(
  settings: RawSettings,
  options: NarwhalOptions = {},
): Promise<Narwhal> {
  const nw = new Narwhal(() => settings, options);
  await nw.start();
  return nw;
}

/**
 * narwhal in front of `upstreams` for the tests of the calling file (or describe): registers the
 * beforeAll that starts the upstreams and then narwhal (`settings` are read then, when the upstream
 * URLs are known) and the afterAll that stops them all. The returned Narwhal is usable once that
 * beforeAll has run.
 */
export function useNarwhal(
  upstreams: FakeUpstream[],
  settings: () => RawSettings,
  options: NarwhalOptions = {},
): Narwhal {
  const nw = new Narwhal(settings, options);
  beforeAll(async () => {
    for (const u of upstreams) await u.listen();
    await nw.start();
  });
  afterAll(async () => {
    for (const u of upstreams) await u.close();
    await nw.close();
  });
  return nw;
}

/** Where a narwhal (in-process or a process) keeps its SQLite database and filesystem store. */
export interface DataPaths {
  readonly dataPath: string;
  /** Objects in nar/, spools in tmp/. */
  readonly storeRoot: string;
}

/** Runs `fn` on narwhal's SQLite database, opened read-only. */
function readDatabase<T>(n: DataPaths, fn: (db: Database.Database) => T): T {
  const db = new Database(join(n.dataPath, 'narwhal.sqlite'), { readonly: true });
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

/** Rows in the database tables narwhal fills on a lookup or download. */
export function dbCounts(n: DataPaths): { narinfos: number; narFiles: number; stored: number } {
  return readDatabase(n, (db) => {
    const one = (sql: string) => (db.prepare(sql).get() as { c: number }).c;
    return {
      narinfos: one('SELECT COUNT(*) AS c FROM narinfos'),
      narFiles: one('SELECT COUNT(*) AS c FROM nar_files'),
      stored: one('SELECT COUNT(*) AS c FROM nar_files WHERE stored_size IS NOT NULL'),
    };
  });
}

/** Whether the database holds a narinfo for this store path hash. */
export function narInfoStored(n: DataPaths, hash: string): boolean {
  return readDatabase(
    n,
    (db) => db.prepare('SELECT 1 FROM narinfos WHERE hash = ?').get(hash) !== undefined,
  );
}

export function objectPath(n: DataPaths, narName: string): string {
  return join(n.storeRoot, 'nar', narName.slice(0, 1), narName.slice(0, 2), narName);
}

/** The stored size the database records for a NAR, or null. */
export function storedSize(n: DataPaths, narName: string): number | null {
  return readDatabase(n, (db) => {
    const row = db.prepare('SELECT stored_size AS s FROM nar_files WHERE key = ?').get(narName) as
      { s: number | null } | undefined;
    return row?.s ?? null;
  });
}

/**
 * Waits until the NAR is committed: the object holds `bytes` and the database says it is stored
 * (the object is renamed into place a moment before the row is updated).
 */
export async function waitStored(
  n: DataPaths,
  narName: string,
  bytes: Buffer,
  timeoutMs = 10_000,
): Promise<void> {
  await eventually(
    async () =>
      ((await readOrNull(objectPath(n, narName)))?.equals(bytes) ?? false) &&
      storedSize(n, narName) === bytes.length,
    timeoutMs,
    `${narName} stored`,
  );
}

/** Waits until no spool file is left (a failed download discards its spool after the failure). */
export async function spoolsRemoved(n: DataPaths): Promise<void> {
  await eventually(
    async () => (await snapshot(join(n.storeRoot, 'tmp'))).length === 0,
    5000,
    'spool removed',
  );
}

/** The Sigs of a narinfo made with narwhal's own key name. */
export function ownSigs(info: NarInfo): string[] {
  return info.sigs.filter((s) => s.startsWith(`${HOSTNAME}:`));
}

/**
 * Runs `fn` and returns the uncaught exceptions raised meanwhile (and shortly after). In
 * `narwhal serve` each of them would kill the process: main.ts installs no handler.
 */
export async function uncaughtDuring(fn: () => Promise<void>): Promise<string[]> {
  const seen: string[] = [];
  const onError = (e: unknown) =>
    seen.push(e instanceof Error ? `${e.name}: ${e.message}` : String(e));
  process.on('uncaughtException', onError);
  try {
    await fn();
    await sleep(200);
  } finally {
    process.off('uncaughtException', onError);
  }
  return seen;
}
