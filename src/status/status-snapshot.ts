import type { LruStatus } from '../lru/lru.service';
import type { RecentFailure } from '../metrics/recent-failures';
import type { HistoryPoint } from './counter-history';

/**
 * What `GET /_narwhal/status.json` answers and the status page shows: one instance's view. No field
 * carries credentials, query strings of upstream URLs or database URLs.
 */
export interface StatusSnapshot {
  generatedAt: string;
  instance: {
    hostname: string;
    /** The URL this instance advertises to its peers (and writes into the locks it holds). */
    url: string;
    version: string;
    publicKey: string;
    startedAt: string;
    uptimeSeconds: number;
  };
  backends: {
    database: 'sqlite' | 'postgres' | 'mysql';
    storage: 'filesystem' | 's3';
    lock: { backend: 'local' | 'redis'; healthy: boolean; degraded: boolean; detail?: string };
  };
  /** Counters since this instance started. */
  totals: {
    narinfo: { hit: number; miss: number; notFound: number; hitRatio: number | null };
    nar: { hit: number; download: number; joined: number; peer: number; hitRatio: number | null };
    servedBytes: { storage: number; download: number; peer: number; total: number };
    upstreamBytes: number;
    downloads: { stored: number; discarded: number };
  };
  /** The last hour, one point per interval; the last point is the interval still running. */
  history: { intervalSeconds: number; points: HistoryPoint[] };
  downloads: {
    /** Upstream downloads this instance runs (it holds their locks). */
    here: InFlightDownload[];
    /** Downloads other instances run that this one streams to its clients right now. */
    fromPeers: PeerDownload[];
  };
  storage: {
    /** Bytes of stored NARs (shared by every instance), null until read once. */
    usedBytes: number | null;
    lru: LruStatus;
  };
  upstreams: UpstreamStatus[];
  /** Newest first. */
  failures: RecentFailure[];
}

export interface InFlightDownload {
  name: string;
  /** The instance running it: this one's advertised URL. */
  holder: string;
  startedAt: string;
  /** Bytes received so far. */
  written: number;
  /** The NAR file's length, when known. */
  length: number | null;
  /** Receiving, received and being verified (NarHash), verified and being committed, or failed. */
  state: 'receiving' | 'verifying' | 'committing' | 'failed';
  /** Readers attached: clients of this instance, peers streaming from it, an S3 upload. */
  readers: number;
  /** Over the last few seconds. */
  bytesPerSecond: number;
}

export interface PeerDownload {
  name: string;
  /** The instance running it (the URL in the NAR's lock). */
  holder: string;
  startedAt: string;
  length: number | null;
}

/**
 * One upstream: the background probe's last result (every field of UpstreamProbe's snapshot, so
 * state added there — a circuit breaker's `circuit` and `retryAt` — reaches the page, which shows
 * an upstream being skipped and until when) and what the flows counted.
 */
export interface UpstreamStatus {
  /** Base URL without credentials or query string. */
  url: string;
  priority: number;
  /** null until the first probe has finished. */
  reachable: boolean | null;
  latencyMs: number | null;
  checkedAt: string | null;
  /** Why the last probe failed. */
  error?: string;
  /** Requests since start (every kind and outcome) and errors since start and in the last hour. */
  requests: number;
  errors: number;
  errorsLastHour: number;
  /** Mean time to response headers since start, null before any request. */
  meanResponseMs: number | null;
}
