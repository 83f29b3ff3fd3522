import { Agent } from 'node:http';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { httpGet } from './http-client';

/**
 * What the fault suite (test/faults) measures and prints. Its tests assert facts (statuses, counts,
 * bytes, what is stored), never timings: the figures are printed, one marked line per measurement,
 * and collected by bench/faults.mjs for the README's "Failure behaviour" table.
 */

/** `NARWHAL_FAULTS_HEAVY=1`: the bigger variants (more requests, bigger NARs, more loops). */
export const HEAVY = process.env.NARWHAL_FAULTS_HEAVY === '1';

/** The value for this mode: `ci` in `npm test`, `heavy` with NARWHAL_FAULTS_HEAVY=1. */
export function scaled<T>(ci: T, heavy: T): T {
  return HEAVY ? heavy : ci;
}

/** The mark at the start of every figure line (bench/faults.mjs looks for it). */
export const FIGURE_MARK = '[faults]';

/** Prints one line of figures: `[faults] <what>: key=value, key=value`. */
export function printFigures(what: string, figures: Record<string, string | number>): void {
  const text = Object.entries(figures)
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');
  console.log(`${FIGURE_MARK} ${what}: ${text}`);
}

/** The p-th percentile (0..100) of `values` (nearest rank); NaN when there are none. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** Timed requests and how they were answered. */
export interface Timed {
  /** Milliseconds per request, in completion order. */
  ms: number[];
  /** Answers per status (0: no answer). */
  statuses: Record<number, number>;
}

/** `n=…, p50=…ms, p99=…ms, max=…ms` of a Timed. */
export function latencyFigures(t: Timed, prefix = ''): Record<string, string | number> {
  const f = (v: number) => `${v.toFixed(1)}ms`;
  return {
    [`${prefix}n`]: t.ms.length,
    [`${prefix}p50`]: f(percentile(t.ms, 50)),
    [`${prefix}p99`]: f(percentile(t.ms, 99)),
    [`${prefix}max`]: f(Math.max(...t.ms)),
  };
}

async function timedGet(url: string, agent: Agent, into: Timed): Promise<void> {
  const t0 = performance.now();
  const res = await httpGet(url, { agent, timeoutMs: 60_000 });
  into.ms.push(performance.now() - t0);
  into.statuses[res.status] = (into.statuses[res.status] ?? 0) + 1;
}

/** `count` GETs of `url`, `concurrency` at a time over keep-alive connections, each timed. */
export async function timedGets(url: string, count: number, concurrency = 1): Promise<Timed> {
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  const timed: Timed = { ms: [], statuses: {} };
  let next = 0;
  const worker = async () => {
    while (next < count) {
      next++;
      await timedGet(url, agent, timed);
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    agent.destroy();
  }
  return timed;
}

/**
 * Runs `work` while an unrelated client GETs `url` one request after another (a pause of
 * `pauseMs` between them), and returns both: how long that client waited while `work` ran.
 */
export async function sampleDuring<T>(
  url: string,
  work: () => Promise<T>,
  pauseMs = 20,
): Promise<{ result: T; timed: Timed }> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const timed: Timed = { ms: [], statuses: {} };
  let running = true;
  const sampler = (async () => {
    while (running) {
      await timedGet(url, agent, timed);
      await sleep(pauseMs);
    }
  })();
  try {
    const result = await work();
    return { result, timed };
  } finally {
    running = false;
    await sampler;
    agent.destroy();
  }
}
