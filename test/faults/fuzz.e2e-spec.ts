import { performance } from 'node:perf_hooks';
import { beforeAll, expect, it } from 'vitest';
import { printFigures, scaled } from '../support/figures';
import { fuzzRequest, type FuzzRequest } from '../support/fuzz-requests';
import { httpGet, rawExchange } from '../support/http-client';
import { waitStored } from '../support/narwhal-app';
import { useNarwhalProcess } from '../support/narwhal-process';
import { mib } from '../support/proc-memory';
import { Prng } from '../support/prng';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, type StorePathFixture } from '../support/store-paths';

/**
 * Fuzzing a narwhal process over raw sockets: fuzzed paths, methods, headers, framing and raw bytes
 * (see test/support/fuzz-requests.ts), ≥ 10,000 of them, against a real upstream that has a few
 * store paths. Nothing may get a 5xx, the process must live on with bounded memory, and a normal
 * client must be served afterwards. The seed is printed; NARWHAL_FUZZ_SEED=<seed> repeats a run.
 */

const REQUESTS = scaled(10_000, 50_000);
const CONCURRENCY = 32;
/** A leak guard, not a performance claim: narwhal idles at ~110–140 MiB. */
const RSS_BOUND = 300 * 1024 * 1024;

const key = makeKey('up-a-1');
const t = useNarwhalProcess(key);
let stored: StorePathFixture[];
let cold: StorePathFixture[];

beforeAll(async () => {
  stored = await Promise.all([1, 2].map(() => makeStorePath([key], { size: 200_000 })));
  cold = await Promise.all([1, 2].map(() => makeStorePath([key], { size: 100_000 })));
  for (const f of [...stored, ...cold]) t.upstream.publish(f);
  for (const f of stored) {
    expect((await httpGet(`${t.narwhal.url}/${f.hash}.narinfo`)).status).toBe(200);
    expect((await httpGet(`${t.narwhal.url}/nar/${f.narName}`)).status).toBe(200);
    await waitStored(t.narwhal, f.narName, f.file, 30_000);
  }
});

it(`answers ${REQUESTS} fuzzed requests without a 5xx, stays up with bounded memory, and serves a normal client after`, async () => {
  const narwhal = t.narwhal;
  const rng = Prng.fromEnv();
  const targets = {
    hashes: [...stored, ...cold].map((f) => f.hash),
    narNames: [...stored, ...cold].map((f) => f.narName),
  };
  const before = await narwhal.memory();
  const statuses: Record<string, number> = {};
  const unanswered: Record<string, number> = {};
  const serverErrors: string[] = [];
  let sent = 0;
  /** RSS (MiB) after every tenth of the requests: flat once warm, if nothing accumulates. */
  const rssSeries: string[] = [];
  const started = performance.now();
  const worker = async () => {
    while (sent < REQUESTS) {
      sent++;
      if (sent % (REQUESTS / 10) === 0) {
        void narwhal.memory().then((m) => rssSeries.push(mib(m.rssBytes)));
      }
      const req: FuzzRequest = fuzzRequest(rng, targets);
      // Bytes that may leave the server waiting for more are followed by the client's end.
      const res = await rawExchange(narwhal.port, req.bytes, {
        timeoutMs: 20_000,
        halfClose: req.kind === 'raw' || req.kind === 'framing',
      });
      const key = res.status === 0 ? 'none' : String(res.status);
      statuses[key] = (statuses[key] ?? 0) + 1;
      if (res.status === 0) unanswered[req.kind] = (unanswered[req.kind] ?? 0) + 1;
      if (res.statuses.some((s) => s >= 500)) {
        serverErrors.push(
          `${res.statuses.join(',')} for ${JSON.stringify(req.bytes.subarray(0, 300).toString('latin1'))}`,
        );
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const seconds = (performance.now() - started) / 1000;
  const after = await narwhal.memory();

  const byClass = (c: string) =>
    Object.entries(statuses)
      .filter(([s]) => s[0] === c)
      .reduce((n, [, v]) => n + v, 0);
  printFigures('fuzzing', {
    seed: rng.seed,
    requests: sent,
    seconds: seconds.toFixed(1),
    'req/s': Math.round(sent / seconds),
    '2xx': byClass('2'),
    '3xx': byClass('3'),
    '4xx': byClass('4'),
    '5xx': byClass('5'),
    unanswered: statuses.none ?? 0,
    'unanswered by kind': JSON.stringify(unanswered),
    statuses: JSON.stringify(statuses),
    'RSS before MiB': mib(before.rssBytes),
    'RSS after MiB': mib(after.rssBytes),
    'RSS MiB per tenth of the run': rssSeries.join(' '),
    'peak RSS MiB': mib(after.peakBytes),
  });

  expect(serverErrors, `seed ${rng.seed}`).toEqual([]);
  expect(narwhal.exitStatus(), narwhal.logs().slice(-4000)).toBeNull();
  // Every complete request got an answer (raw bytes and odd framing may just be dropped).
  expect(
    (unanswered.path ?? 0) + (unanswered.method ?? 0) + (unanswered.header ?? 0),
    `seed ${rng.seed}`,
  ).toBe(0);
  expect(after.peakBytes).toBeLessThan(RSS_BOUND);

  for (const f of stored) {
    const narInfo = await httpGet(`${narwhal.url}/${f.hash}.narinfo`, { keepBody: true });
    expect(narInfo.status).toBe(200);
    expect(narInfo.body.toString()).toContain(`StorePath: ${f.storePath}`);
    const nar = await httpGet(`${narwhal.url}/nar/${f.narName}`, { keepBody: true });
    expect(nar.status).toBe(200);
    expect(nar.complete).toBe(true);
    expect(nar.body.equals(f.file)).toBe(true);
  }
});
