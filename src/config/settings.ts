/**
 * The one list of narwhal's settings. Each is a CLI flag (`--name`), an environment variable
 * (NAME upper-cased, `-` → `_`) and a key of the YAML file given by `--config`. The README's table
 * and `narwhal serve --help` are made from this list.
 */
export interface SettingDef {
  /** Flag name without the leading dashes. */
  name: string;
  description: string;
  /** The value used when the setting is not given, parsed and validated like a given one. */
  default?: string;
  /** How the default is shown when it is not a plain value (derived from other settings, or none). */
  defaultText?: string;
  repeatable?: boolean;
  boolean?: boolean;
  /** Value never printed (passwords, keys). */
  secret?: boolean;
}

export const SETTINGS: readonly SettingDef[] = [
  {
    name: 'server-addr',
    description: 'Address to listen on, `[host]:port`.',
    default: ':8501',
  },
  {
    name: 'server-fast-lane',
    description:
      "Answer hot hits (a narinfo or small NAR served lately, kept in memory) straight from the socket, before Node's HTTP server parses the request; only plain `GET … HTTP/1.1` heads it fully understands, anything else goes to the HTTP server unchanged. `false`: hot hits are answered inside the HTTP server.",
    default: 'true',
    boolean: true,
  },
  {
    name: 'cache-hostname',
    description: "This cache's name; also the name of the signing key it generates.",
    defaultText: 'the machine hostname',
  },
  {
    name: 'cache-data-path',
    description: 'Home of the embedded database, local storage and the generated key.',
    default: './var',
  },
  {
    name: 'cache-database-url',
    description:
      'Database: `sqlite:<path>`, `postgresql://user:pass@host:port/db` (or `postgres://`), `mysql://user:pass@host:port/db` (MySQL or MariaDB).',
    defaultText: 'sqlite:<data-path>/narwhal.sqlite',
    secret: true,
  },
  {
    name: 'cache-database-pool-max',
    description: 'Most database connections per instance (PostgreSQL/MySQL; SQLite uses one).',
    default: '20',
  },
  {
    name: 'cache-storage-local',
    description: 'Directory where NAR files are stored (not together with S3).',
    defaultText: '<data-path>/store, unless S3 is configured',
  },
  {
    name: 'cache-storage-s3-bucket',
    description: 'S3 bucket for NAR files; setting it selects S3 storage.',
    defaultText: 'none',
  },
  {
    name: 'cache-storage-s3-endpoint',
    description:
      'S3 endpoint URL for S3-compatible servers (MinIO, Garage, Ceph RGW, R2); empty means AWS.',
    defaultText: 'AWS',
  },
  { name: 'cache-storage-s3-region', description: 'S3 region.', default: 'us-east-1' },
  {
    name: 'cache-storage-s3-access-key-id',
    description: 'S3 access key id; empty uses the AWS SDK default credential chain.',
    defaultText: 'none',
    secret: true,
  },
  {
    name: 'cache-storage-s3-secret-access-key',
    description: 'S3 secret access key.',
    defaultText: 'none',
    secret: true,
  },
  {
    name: 'cache-storage-s3-force-path-style',
    description:
      'Address the bucket as `endpoint/bucket` instead of `bucket.endpoint` (MinIO and most self-hosted servers need it).',
    default: 'false',
    boolean: true,
  },
  {
    name: 'cache-storage-s3-prefix',
    description: 'Key prefix for every object narwhal writes, e.g. `narwhal/`.',
    defaultText: 'none',
  },
  {
    name: 'cache-min-free-space',
    description:
      'Free space below which the local disk (spool, filesystem store) is reported low in /readyz, the metrics and the log, before a full disk fails downloads.',
    default: '1G',
  },
  {
    name: 'cache-upstream-url',
    description:
      'Upstream cache URL; repeat for several. `?priority=N` orders them (lower first; default 40, ties keep the given order). `https://user:pass@host` sends basic auth.',
    default: 'https://cache.nixos.org',
    repeatable: true,
    secret: true,
  },
  {
    name: 'cache-upstream-public-key',
    description:
      'Trusted upstream signing key `name:base64`; repeat for several. A narinfo is accepted only if one of its signatures verifies against one of these.',
    default: 'cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=',
    repeatable: true,
  },
  {
    name: 'cache-secret-key-path',
    description:
      'Ed25519 secret key (`name:base64`) used to sign narinfos; generated with mode 0600 when absent.',
    defaultText: '<data-path>/secret-key',
  },
  {
    name: 'cache-sign-narinfo',
    description: "Add narwhal's own signature to every narinfo served.",
    default: 'true',
    boolean: true,
  },
  {
    name: 'cache-max-size',
    description: 'Size limit of stored NARs (`500M`, `10G`, `1T`); the LRU job evicts beyond it.',
    defaultText: 'none (no limit)',
  },
  {
    name: 'cache-lru-schedule',
    description:
      'Cron expression for the LRU job (with seconds as an optional sixth leading field).',
    default: '0 2 * * *',
  },
  {
    name: 'cache-upstream-dialer-timeout',
    description: 'Timeout for connecting to an upstream.',
    default: '3s',
  },
  {
    name: 'cache-upstream-response-header-timeout',
    description: 'Timeout for an upstream to send response headers.',
    default: '10s',
  },
  {
    name: 'cache-upstream-body-timeout',
    description:
      'Longest pause between two chunks of an upstream body before the download is abandoned.',
    default: '60s',
  },
  {
    name: 'cache-upstream-hedge',
    description:
      'Ask every upstream for a narinfo at once and answer with the highest-priority valid one as soon as it is certain; `false` asks them one after another (fewer requests to bandwidth-billed upstreams, slower misses).',
    default: 'true',
    boolean: true,
  },
  {
    name: 'cache-upstream-breaker-failures',
    description:
      'Consecutive failures (timeouts, connection errors, 5xx, 429) after which an upstream is skipped for a back-off; `0` never skips.',
    default: '5',
  },
  {
    name: 'cache-upstream-breaker-backoff',
    description:
      'First back-off of a failing upstream; it doubles each time the retry after it fails too.',
    default: '10s',
  },
  {
    name: 'cache-upstream-breaker-max-backoff',
    description:
      'Longest back-off of a failing upstream (and the most a `Retry-After` is honoured for).',
    default: '5m',
  },
  {
    name: 'netrc-file',
    description:
      'netrc file with upstream credentials (`machine HOST login USER password SECRET`), sent as basic auth to the upstreams on that host only; credentials in an upstream URL win.',
    defaultText: 'none',
  },
  {
    name: 'cache-negative-ttl',
    description:
      'How long a narinfo that no upstream has is remembered as missing (no upstream request until then); `0` turns it off.',
    default: '1m',
  },
  {
    name: 'cache-upstream-narinfo-timeout',
    description:
      'Deadline for a whole narinfo fetch from one upstream (headers and body); past it the next upstream is asked.',
    default: '15s',
  },
  {
    name: 'cache-prefetch-narinfos',
    description:
      "When a narinfo is fetched from an upstream, fetch the narinfos of its References too, in the background and recursively (the whole closure), so that the client's next lookups are hits.",
    default: 'true',
    boolean: true,
  },
  {
    name: 'cache-prefetch-nars',
    description:
      "When a client asks for a narinfo, start downloading its NAR in the background (unless stored or running), so that the client's `GET /nar/…` joins the download or finds it stored. Only for narinfos clients ask for, never for a whole closure.",
    default: 'true',
    boolean: true,
  },
  {
    name: 'cache-prefetch-concurrency',
    description:
      'Most prefetches (narinfo lookups and NAR downloads) an instance runs at once; more wait in a queue (at most 10,000).',
    default: '16',
  },
  {
    name: 'cache-prefetch-per-upstream',
    description:
      "A prefetch starts only while, for each upstream it asks, the clients' requests waiting for that upstream plus the prefetches running stay below this: clients come first, prefetches get the capacity left.",
    default: '16',
  },
  {
    name: 'cache-upstream-min-rate',
    description:
      'Slowest acceptable NAR transfer from an upstream, in bytes per second averaged over each `--cache-upstream-body-timeout` (`4K`, `1M`); a slower one is abandoned like a broken one. `0` turns the check off.',
    default: '4K',
  },
  {
    name: 'cache-client-stall-timeout',
    description:
      'A NAR client that takes no byte for this long while bytes wait for it is disconnected (what it holds is freed). `0` turns it off.',
    default: '60s',
  },
  {
    name: 'cache-sendfile',
    description:
      'Send stored NARs of 1 MiB or more from the local store with `sendfile(2)`: the kernel copies the file to the socket, as nginx does with `sendfile on` (also what a client of a running download has left once it is verified, 1 MiB or more). Needs the native helper `npm ci` builds (Linux); without it, or `false`, they are read and written through two buffers.',
    default: 'true',
    boolean: true,
  },
  {
    name: 'cache-allow-put-verb',
    description:
      'Accept uploads (`nix copy --to`): `PUT` of NARs, narinfos, listings, logs and realisations, each verified; they need a token with the `write` permission. Off: `PUT` is 405.',
    default: 'false',
    boolean: true,
  },
  {
    name: 'cache-allow-delete-verb',
    description:
      '`DELETE /<hash>.narinfo` and `DELETE /nar/<file>` with a token that has the `delete` permission. Off: `DELETE` is 405.',
    default: 'false',
    boolean: true,
  },
  {
    name: 'cache-require-read-token',
    description:
      'Every read (narinfo, NAR, listing, log, realisation, `/nix-cache-info`, the status page) needs a token with the `read` permission, as the password of HTTP Basic auth (a netrc file) or as `Authorization: Bearer`; `/healthz`, `/readyz` and `/pubkey` stay open.',
    default: 'false',
    boolean: true,
  },
  {
    name: 'cache-require-trusted-signature',
    description:
      'Accept an uploaded narinfo (or realisation) only if it carries a signature by a trusted key: `--cache-upstream-public-key` or `--cache-upload-public-key`.',
    default: 'false',
    boolean: true,
  },
  {
    name: 'cache-upload-public-key',
    description:
      'Key `name:base64` trusted for uploads only (e.g. the key your CI signs with); repeat for several. See `--cache-require-trusted-signature`.',
    defaultText: 'none',
    repeatable: true,
  },
  {
    name: 'cache-token-recheck-interval',
    description:
      'How long an instance trusts what it learned about a token before asking the database again: a revoked or expired token stops working on every instance within this time. `0` asks the database on every request.',
    default: '5s',
  },
  {
    name: 'prometheus-require-token',
    description: '`GET /metrics` needs a token with the `metrics` permission.',
    default: 'false',
    boolean: true,
  },
  {
    name: 'cache-lock-backend',
    description:
      'Lock provider: `local` (one instance) or `redis` (several instances sharing a database and storage).',
    default: 'local',
  },
  {
    name: 'cache-redis-addrs',
    description:
      'Redis address(es) `host:port`, comma-separated; several addresses mean a Redis Cluster.',
    default: '127.0.0.1:6379',
  },
  { name: 'cache-redis-username', description: 'Redis ACL user name.', defaultText: 'none' },
  {
    name: 'cache-redis-password',
    description: 'Redis password.',
    defaultText: 'none',
    secret: true,
  },
  { name: 'cache-redis-db', description: 'Redis database number.', default: '0' },
  {
    name: 'cache-redis-use-tls',
    description: 'Connect to Redis with TLS.',
    default: 'false',
    boolean: true,
  },
  {
    name: 'cache-lock-redis-key-prefix',
    description: 'Prefix of the Redis keys narwhal uses for locks.',
    default: 'narwhal:lock:',
  },
  {
    name: 'cache-lock-download-ttl',
    description:
      'Lease of a download or lookup lock; the holder renews it every third of it while it works, so it only matters when a holder dies and cannot be asked (a lost host): then another instance takes over after at most this long.',
    default: '10s',
  },
  {
    name: 'cache-lock-lru-ttl',
    description: 'Lease of the LRU job lock, renewed while the job runs.',
    default: '30s',
  },
  {
    name: 'cache-lock-retry-max-attempts',
    description:
      'How often a waiter retries a lock held by a live instance before giving up with 503 and `Retry-After` (about 1.5 min with the default delays).',
    default: '60',
  },
  {
    name: 'cache-lock-retry-initial-delay',
    description: 'First wait between lock retries.',
    default: '50ms',
  },
  {
    name: 'cache-lock-retry-max-delay',
    description: 'Longest wait between lock retries (exponential backoff).',
    default: '2s',
  },
  {
    name: 'cache-lock-retry-jitter',
    description: 'Random fraction (0–1) added to or taken from each retry wait.',
    default: '0.2',
  },
  {
    name: 'cache-lock-allow-degraded-mode',
    description:
      'While Redis is unreachable, serve misses with local locks (logged, counted, shown in /readyz) instead of failing them.',
    default: 'true',
    boolean: true,
  },
  {
    name: 'cache-advertise-url',
    description:
      'URL at which the other instances reach this one, to stream a download it is running (several instances only).',
    defaultText: 'http://<hostname>:<port>',
  },
  {
    name: 'cache-priority',
    description: 'Priority announced in /nix-cache-info (lower is preferred by clients).',
    default: '40',
  },
  {
    name: 'cache-store-dir',
    description: 'Nix store directory announced in /nix-cache-info and expected in narinfos.',
    default: '/nix/store',
  },
  {
    name: 'prometheus-enabled',
    description: 'Serve Prometheus metrics at `GET /metrics` (404 when off).',
    default: 'false',
    boolean: true,
  },
  {
    name: 'log-level',
    description: 'One of `error`, `warn`, `info`, `debug`, `verbose`.',
    default: 'info',
  },
  {
    name: 'shutdown-timeout',
    description:
      'On SIGTERM/SIGINT, how long responses in flight (NAR streams too) may take to finish before their connections are closed.',
    default: '30s',
  },
];

const BY_NAME: ReadonlyMap<string, SettingDef> = new Map(SETTINGS.map((s) => [s.name, s]));

/** The definition of a setting; throws for a name that is not in SETTINGS (a programming error). */
export function settingDef(name: string): SettingDef {
  const def = BY_NAME.get(name);
  if (!def) throw new Error(`unknown setting ${name}`);
  return def;
}

/** The default as people see it (README, --help). */
export function defaultShown(def: SettingDef): string {
  return def.default ?? def.defaultText ?? 'none';
}

export function envName(setting: string): string {
  return setting.toUpperCase().replace(/-/g, '_');
}
