import type { PublicKey } from '../nix/key-text';

/** The typed configuration every module receives (token APP_CONFIG), built by `buildConfig`. */

export type LogLevel = 'error' | 'warn' | 'info' | 'debug' | 'verbose';
export type DatabaseConfig =
  | { kind: 'sqlite'; path: string }
  | { kind: 'postgres'; url: string; poolMax: number }
  | { kind: 'mysql'; url: string; poolMax: number };
export type S3StorageConfig = {
  kind: 's3';
  bucket: string;
  endpoint?: string;
  region: string;
  accessKeyId?: string;
  secretAccessKey?: string;
  forcePathStyle: boolean;
  prefix: string;
  /** Local directory for download spools. */
  spoolDir: string;
};
export type StorageConfig = { kind: 'fs'; path: string } | S3StorageConfig;
export interface LockTimings {
  downloadTtlMs: number;
  lruTtlMs: number;
  retry: { maxAttempts: number; initialDelayMs: number; maxDelayMs: number; jitter: number };
}
export type LockConfig =
  | ({ kind: 'local' } & LockTimings)
  | ({
      kind: 'redis';
      addrs: string[];
      username?: string;
      password?: string;
      db: number;
      tls: boolean;
      keyPrefix: string;
      allowDegraded: boolean;
    } & LockTimings);

/** One `--cache-upstream-url`, as given (UpstreamService orders them by priority). */
export interface UpstreamConfig {
  /** Base URL without credentials, query or trailing slash. */
  url: string;
  priority: number;
  /** Query string (with `?`) added to every request, or ''. */
  query: string;
  /** `Authorization` header value from the URL's credentials or the netrc file; never logged. */
  authorization?: string;
}

/** Uploads, deletes and who may do what (tokens). */
export interface AccessConfig {
  /** PUT uploads (with a `write` token). */
  allowPut: boolean;
  /** DELETE of narinfos and NARs (with a `delete` token). */
  allowDelete: boolean;
  /** Reads need a `read` token. */
  requireReadToken: boolean;
  /** An uploaded narinfo or realisation must carry a signature by a trusted key. */
  requireTrustedSignature: boolean;
  /** Keys trusted for uploads besides the upstream keys. */
  uploadPublicKeys: PublicKey[];
  /** How long what an instance learned about a token is trusted; 0: ask the database every time. */
  tokenRecheckMs: number;
  /** `GET /metrics` needs a `metrics` token. */
  metricsRequireToken: boolean;
}

/** What narwhal fetches before clients ask, and how much of it at once. */
export interface PrefetchConfig {
  /** The References of a narinfo fetched from an upstream, recursively. */
  narinfos: boolean;
  /** The NAR of a narinfo a client asked for. */
  nars: boolean;
  /** Most prefetches running at once. */
  concurrency: number;
  /** A prefetch starts only while each upstream it asks has fewer requests than this waiting. */
  perUpstream: number;
}

export interface AppConfig {
  server: { host: string; port: number };
  hostname: string;
  dataPath: string;
  storeDir: string;
  priority: number;
  database: DatabaseConfig;
  storage: StorageConfig;
  /** Free bytes below which the local disk is reported low. */
  minFreeSpace: number;
  upstreams: UpstreamConfig[];
  upstreamPublicKeys: PublicKey[];
  upstreamTimeouts: {
    connectMs: number;
    headersMs: number;
    bodyMs: number;
    /** Deadline of a whole narinfo fetch. */
    narinfoMs: number;
    /** Slowest acceptable NAR transfer (bytes/s, averaged over each bodyMs); 0 = no check. */
    minRate: number;
  };
  /** Ask all upstreams for a narinfo at once (otherwise one after another). */
  upstreamHedge: boolean;
  /** Per-upstream circuit breaker: `failures` in a row open it (0: never). */
  upstreamBreaker: { failures: number; backoffMs: number; maxBackoffMs: number };
  /** How long an upstream "no" for a narinfo is remembered; 0: not at all. */
  negativeTtlMs: number;
  /** Background fetches ahead of clients (src/prefetch/). */
  prefetch: PrefetchConfig;
  signing: { secretKeyPath: string; signNarInfo: boolean };
  lru: { maxSize?: number; schedule: string };
  lock: LockConfig;
  /** How other instances reach this one (for streaming an in-flight download); derived when unset. */
  advertiseUrl?: string;
  /**
   * This instance's URL as other instances reach it: `advertiseUrl`, or derived from the listen
   * address and the host name. Also names this instance's spool files.
   */
  selfUrl: string;
  /** `GET /metrics` (Prometheus) when enabled. */
  metrics: { enabled: boolean };
  access: AccessConfig;
  logLevel: LogLevel;
  /** A NAR client that takes no waiting byte for this long is cut; 0 = never. */
  clientStallTimeoutMs: number;
  /** Stored NARs of 1 MiB or more are sent with sendfile(2) when the native helper is built. */
  sendfile: boolean;
  /** Hot hits are answered from the socket before node:http (FastLane). */
  fastLane: boolean;
  /** How long in-flight responses may run after SIGTERM/SIGINT before they are cut. */
  shutdownTimeoutMs: number;
}
