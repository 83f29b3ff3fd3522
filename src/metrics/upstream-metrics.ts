import { performance } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { metricName as name } from './metric-prefix';

export type UpstreamKind = 'narinfo' | 'nar' | 'head' | 'listing' | 'log' | 'realisation';
export type UpstreamOutcome = 'ok' | 'not_found' | 'error' | 'cancelled';
/** The circuit breaker states as the gauge reports them. */
export const CIRCUIT_STATE_VALUES = { closed: 0, 'half-open': 1, open: 2 } as const;
const UPSTREAM_KINDS: readonly UpstreamKind[] = [
  'narinfo',
  'nar',
  'head',
  'listing',
  'log',
  'realisation',
];
const UPSTREAM_OUTCOMES: readonly UpstreamOutcome[] = ['ok', 'not_found', 'error', 'cancelled'];
export type UpstreamErrorReason =
  'timeout' | 'connection' | 'http_4xx' | 'http_5xx' | 'http_other' | 'invalid' | 'other';

/** `upstream` label of a URL that belongs to no configured upstream (an absolute NAR URL elsewhere). */
export const OTHER_UPSTREAM = 'other';

/** One upstream request being timed until its response headers arrive (or it fails). */
export interface UpstreamTiming {
  answered(status: number): void;
  failed(error: unknown): void;
  /** narwhal cancelled the request itself (a hedged lookup no longer needed its answer). */
  cancelled(): void;
}

/** Upstream answers that mean "not here" rather than "broken". */
const NOT_FOUND_STATUSES = new Set([404, 410]);
const TIMEOUT_CODES = new Set([
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'ETIMEDOUT',
]);
const CONNECTION_CODES = new Set(['UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_ABORTED']);

/**
 * What narwhal asks of the upstream caches: requests by kind and outcome, the time to their headers,
 * the NAR bytes received, failures by reason, requests skipped while a circuit is open and the
 * circuits' states, registered in `registry`.
 */
export class UpstreamMetrics {
  readonly upstreamRequests: Counter<'upstream' | 'kind' | 'outcome'>;
  readonly upstreamDuration: Histogram<'upstream' | 'kind'>;
  readonly upstreamBytes: Counter<'upstream'>;
  readonly upstreamErrors: Counter<'upstream' | 'reason'>;
  readonly upstreamSkips: Counter<'upstream'>;
  readonly circuit: Gauge<'upstream'>;
  private circuitSource: () => Iterable<{ url: string; state: keyof typeof CIRCUIT_STATE_VALUES }> =
    () => [];

  /** `upstreams`: the configured upstreams' base URLs, whose series start at 0. */
  constructor(upstreams: readonly string[], registry: Registry) {
    this.upstreamRequests = new Counter({
      name: name('upstream_requests_total'),
      help: 'Requests to upstream caches by upstream base URL, kind (narinfo, nar, head) and outcome (ok, not_found, error).',
      labelNames: ['upstream', 'kind', 'outcome'],
      registers: [registry],
    });
    this.upstreamDuration = new Histogram({
      name: name('upstream_request_duration_seconds'),
      help: 'Time until an upstream sent its response headers (or the request failed).',
      labelNames: ['upstream', 'kind'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    });
    this.upstreamBytes = new Counter({
      name: name('upstream_bytes_total'),
      help: 'NAR body bytes received from upstream caches.',
      labelNames: ['upstream'],
      registers: [registry],
    });
    this.upstreamErrors = new Counter({
      name: name('upstream_errors_total'),
      help: 'Upstream failures by reason: timeout, connection, http_4xx, http_5xx, http_other, invalid (a narinfo rejected as malformed, too large, for another path or not validly signed), other.',
      labelNames: ['upstream', 'reason'],
      registers: [registry],
    });
    this.upstreamSkips = new Counter({
      name: name('upstream_skipped_total'),
      help: 'Upstream requests not sent because the upstream is backing off after repeated failures (circuit open).',
      labelNames: ['upstream'],
      registers: [registry],
    });
    this.circuit = new Gauge({
      name: name('upstream_circuit_state'),
      help: "State of an upstream's circuit breaker: 0 closed (asked), 1 half-open (one trial request), 2 open (skipped).",
      labelNames: ['upstream'],
      registers: [registry],
      collect: () => {
        for (const c of this.circuitSource())
          this.circuit.labels(c.url).set(CIRCUIT_STATE_VALUES[c.state]);
      },
    });

    // Known label values start at 0, so that rates and absent-series alerts work from the start.
    for (const url of upstreams) {
      this.upstreamBytes.labels(url).inc(0);
      this.upstreamSkips.labels(url).inc(0);
      for (const kind of UPSTREAM_KINDS)
        for (const outcome of UPSTREAM_OUTCOMES)
          this.upstreamRequests.labels(url, kind, outcome).inc(0);
    }
  }

  /** Starts timing one upstream request; call `answered` when headers arrive, `failed` otherwise. */
  upstreamRequest(upstream: string, kind: UpstreamKind): UpstreamTiming {
    const began = performance.now();
    const finish = (outcome: UpstreamOutcome) => {
      this.upstreamDuration.labels(upstream, kind).observe((performance.now() - began) / 1000);
      this.upstreamRequests.labels(upstream, kind, outcome).inc();
    };
    return {
      answered: (status) => {
        if (status === 200) return finish('ok');
        if (NOT_FOUND_STATUSES.has(status)) return finish('not_found');
        finish('error');
        this.upstreamErrors.labels(upstream, statusReason(status)).inc();
      },
      failed: (error) => {
        finish('error');
        this.upstreamFailed(upstream, error);
      },
      cancelled: () => finish('cancelled'),
    };
  }

  /** A request to an upstream was not sent: its circuit is open. */
  upstreamSkipped(upstream: string): void {
    this.upstreamSkips.labels(upstream).inc();
  }

  /** Where the circuit-state gauge reads from at scrape time (the upstreams' breakers). */
  watchCircuits(
    source: () => Iterable<{ url: string; state: keyof typeof CIRCUIT_STATE_VALUES }>,
  ): void {
    this.circuitSource = source;
  }

  /** An upstream request or body broke (network, timeout). */
  upstreamFailed(upstream: string, error: unknown): void {
    this.upstreamErrors.labels(upstream, upstreamErrorReason(error)).inc();
  }

  /** An upstream answered with something narwhal rejects (malformed, unsigned, too large). */
  upstreamInvalid(upstream: string): void {
    this.upstreamErrors.labels(upstream, 'invalid').inc();
  }

  /**
   * A NAR body from an upstream that counts its bytes as they are consumed and counts a transport
   * error if it breaks. Ending the iteration early still closes the underlying body.
   */
  countUpstreamBody(upstream: string, body: AsyncIterable<Buffer>): AsyncIterable<Buffer> {
    const bytes = this.upstreamBytes.labels(upstream);
    const onError = (e: unknown) => this.upstreamFailed(upstream, e);
    return (async function* counted() {
      try {
        for await (const chunk of body) {
          bytes.inc(chunk.length);
          yield chunk;
        }
      } catch (e) {
        onError(e);
        throw e;
      }
    })();
  }
}

/** Classifies a failed upstream request or body by its error code. */
export function upstreamErrorReason(e: unknown): UpstreamErrorReason {
  const err = e as { code?: unknown; name?: unknown; errors?: unknown[] } | null;
  if (err?.name === 'TimeoutError') return 'timeout'; // an AbortSignal.timeout deadline
  const code =
    typeof err?.code === 'string'
      ? err.code
      : (err?.errors?.[0] as { code?: unknown } | undefined)?.code; // AggregateError (several addresses)
  if (typeof code !== 'string') return 'other';
  if (TIMEOUT_CODES.has(code)) return 'timeout';
  if (CONNECTION_CODES.has(code) || /^E[A-Z]+$/.test(code)) return 'connection';
  return 'other';
}

function statusReason(status: number): UpstreamErrorReason {
  if (status >= 500 && status < 600) return 'http_5xx';
  if (status >= 400 && status < 500) return 'http_4xx';
  return 'http_other';
}
