import type { UpstreamClient } from './upstream-client';
import { UpstreamStatusError } from './upstream.service';

/** What one upstream said about a document. */
export type Answer<T> =
  /** It has it (and it passed the caller's checks). */
  | { kind: 'found'; value: T }
  /** A definite "not here": 404/410, or an answer the caller rejected (unsigned, malformed). */
  | { kind: 'absent' }
  /** No answer to rely on: timeout, connection error, 5xx, skipped while backing off. */
  | { kind: 'failed' };

export interface AskResult<T> {
  found?: { upstream: UpstreamClient; value: T };
  /** True when every upstream said "not here" (nothing failed): a miss worth remembering. */
  allAbsent: boolean;
}

export interface AskOptions<T> {
  /** Ask every upstream at once (true) or one after another (false). */
  hedge: boolean;
  /** Called with a found value that lost to a higher-priority one (e.g. to close its body). */
  discard?: (value: T) => void;
}

/**
 * Asks the upstreams (in priority order) for one document and returns the highest-priority
 * upstream's valid answer. Hedged, every upstream is asked at once and the answer is returned as
 * soon as it is certain: a hit waits only for the higher-priority upstreams still answering, and
 * the requests still running below it are cancelled through their signal; a miss costs the
 * slowest upstream's answer instead of the sum of all of them. Not hedged, the next upstream is
 * asked only after the previous one missed.
 *
 * `ask` gets a signal to pass to its request; an error it throws counts as `failed`.
 */
export async function askUpstreams<T>(
  upstreams: readonly UpstreamClient[],
  ask: (upstream: UpstreamClient, signal: AbortSignal) => Promise<Answer<T>>,
  options: AskOptions<T>,
): Promise<AskResult<T>> {
  const controllers = upstreams.map(() => new AbortController());
  const asked: (Promise<Answer<T>> | undefined)[] = [];
  const start = (i: number): Promise<Answer<T>> =>
    (asked[i] ??= ask(upstreams[i], controllers[i].signal).catch((): Answer<T> => ({
      kind: 'failed',
    })));
  if (options.hedge) upstreams.forEach((_, i) => void start(i));
  let allAbsent = true;
  for (let i = 0; i < upstreams.length; i++) {
    const answer = await start(i);
    if (answer.kind === 'found') {
      for (let j = i + 1; j < upstreams.length; j++) {
        controllers[j].abort();
        void asked[j]?.then((lost) => {
          if (lost.kind === 'found') options.discard?.(lost.value);
        });
      }
      return { found: { upstream: upstreams[i], value: answer.value }, allAbsent: false };
    }
    if (answer.kind === 'failed') allAbsent = false;
  }
  return { allAbsent };
}

/** The answer an upstream request error stands for: 404/410 are "not here", the rest failures. */
export function answerOfError<T>(e: unknown): Answer<T> {
  return e instanceof UpstreamStatusError && (e.status === 404 || e.status === 410)
    ? { kind: 'absent' }
    : { kind: 'failed' };
}
