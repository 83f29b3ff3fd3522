import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { FakeUpstream } from '../support/fake-upstream';
import { printFigures, scaled } from '../support/figures';
import { httpGet, stalledGet } from '../support/http-client';
import { scrapeValue } from '../support/metrics';
import { waitStored } from '../support/narwhal-app';
import { NarwhalProcess } from '../support/narwhal-process';
import { mib } from '../support/proc-memory';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, type StorePathFixture } from '../support/store-paths';
import { pollUntil } from '../support/wait';

/**
 * Slow readers: 200 clients start a cold NAR and stop reading. Without a stall timeout they hold
 * what they hold until they go; with --cache-client-stall-timeout 2s narwhal drops them (counted
 * in narwhal_clients_dropped_total) and its RSS returns near where it was. RSS is printed, the
 * drops are asserted.
 */

const CLIENTS = 200;
const NAR_BYTES = scaled(16, 64) * 1024 * 1024;
/** How long the stalled clients are left alone when nothing drops them. */
const HOLD_MS = 5_000;
/** How long RSS is given to come down after the drops (garbage waits for a full collection). */
const SETTLE_MS = scaled(5_000, 20_000);
/** One client reading a cold NAR this big at full speed (uncompressed, on loopback). */
const BIG_NAR_BYTES = scaled(256, 1024) * 1024 * 1024;
/** A leak guard, not a performance claim: narwhal idles at ~110–140 MiB. */
const RSS_BOUND = 300 * 1024 * 1024;

const key = makeKey('up-a-1');
let upstream: FakeUpstream;
let narwhal: NarwhalProcess | undefined;
let dataPath: string;

beforeAll(async () => {
  upstream = await FakeUpstream.start();
});

afterEach(async () => {
  await narwhal?.kill();
  narwhal = undefined;
  await rm(dataPath, { recursive: true, force: true });
});

afterAll(async () => {
  await upstream?.close();
});

async function start(
  stallTimeout: string,
  narBytes = NAR_BYTES,
): Promise<{ n: NarwhalProcess; f: StorePathFixture }> {
  dataPath = await mkdtemp(join(tmpdir(), 'narwhal-slow-readers-'));
  const f = await makeStorePath([key], { size: narBytes, compression: 'none' });
  upstream.publish(f);
  narwhal = await NarwhalProcess.start({
    dataPath,
    upstreamUrls: [upstream.url],
    upstreamPublicKeys: [key.publicText],
    env: { CACHE_CLIENT_STALL_TIMEOUT: stallTimeout, PROMETHEUS_ENABLED: 'true' },
  });
  expect((await httpGet(`${narwhal.url}/${f.hash}.narinfo`)).status).toBe(200);
  return { n: narwhal, f };
}

const dropped = async (n: NarwhalProcess) =>
  (await scrapeValue(n.url, 'narwhal_clients_dropped_total', { reason: 'stalled' })) ?? 0;

it(`a client reading a cold ${BIG_NAR_BYTES / 1024 / 1024} MiB NAR at full speed: memory does not grow with the NAR`, async () => {
  const { n, f } = await start('60s', BIG_NAR_BYTES);
  const before = await n.memory();
  const res = await httpGet(`${n.url}/nar/${f.narName}`);
  await waitStored(n, f.narName, f.file, 120_000);
  const after = await n.memory();
  printFigures('one fast reader of a cold uncompressed NAR', {
    'NAR MiB': mib(f.file.length),
    'RSS before MiB': mib(before.rssBytes),
    'peak RSS MiB': mib(after.peakBytes),
  });
  expect(res.status).toBe(200);
  expect(res.complete).toBe(true);
  expect(res.sha256).toBe(f.fileHash);
  expect(after.peakBytes).toBeLessThan(RSS_BOUND);
});

it(`${CLIENTS} clients that stop reading a cold NAR hold memory until they go`, async () => {
  const { n, f } = await start('0');
  const before = await n.memory();
  const clients = Array.from({ length: CLIENTS }, () => stalledGet(n.port, `/nar/${f.narName}`));
  await waitStored(n, f.narName, f.file, 60_000);
  await sleep(HOLD_MS);
  const held = await n.memory();
  const stillOpen = (
    await Promise.all(
      clients.map((c) => Promise.race([c.closed.then(() => 0), sleep(10).then(() => 1)])),
    )
  ).reduce((a: number, b) => a + b, 0);
  for (const c of clients) c.socket.destroy();
  printFigures('slow readers, no stall timeout', {
    clients: CLIENTS,
    'NAR MiB': mib(f.file.length),
    'RSS before MiB': mib(before.rssBytes),
    'RSS while they stall MiB': mib(held.rssBytes),
    'peak RSS MiB': mib(held.peakBytes),
    'still connected after s': `${stillOpen} after ${HOLD_MS / 1000}`,
    dropped: await dropped(n),
  });
  expect(stillOpen).toBe(CLIENTS);
  expect(await dropped(n)).toBe(0);
});

it(`drops ${CLIENTS} stalled clients of a cold NAR after --cache-client-stall-timeout 2s`, async () => {
  const { n, f } = await start('2s');
  const before = await n.memory();
  const clients = Array.from({ length: CLIENTS }, () => stalledGet(n.port, `/nar/${f.narName}`));
  const count = await pollUntil(
    () => dropped(n),
    (d) => d >= CLIENTS,
    { timeoutMs: 60_000, intervalMs: 250 },
  );
  // The clients read again only now: they find their connections ended, with less than the NAR.
  for (const c of clients) c.socket.resume();
  await Promise.all(clients.map((c) => c.closed));
  const justAfter = await n.memory();
  await sleep(SETTLE_MS);
  const after = await n.memory();
  const received = clients.map((c) => c.received());
  printFigures('slow readers, --cache-client-stall-timeout 2s', {
    clients: CLIENTS,
    'NAR MiB': mib(f.file.length),
    'RSS before MiB': mib(before.rssBytes),
    'RSS just after the drops MiB': mib(justAfter.rssBytes),
    [`RSS ${SETTLE_MS / 1000} s later MiB`]: mib(after.rssBytes),
    'peak RSS MiB': mib(after.peakBytes),
    dropped: count,
    'most bytes a client got MiB': mib(Math.max(...received)),
  });
  expect(count).toBe(CLIENTS);
  expect(Math.max(...received)).toBeLessThan(f.file.length);
  expect(n.exitStatus()).toBeNull();
  const reading = await httpGet(`${n.url}/nar/${f.narName}`);
  expect(reading.status).toBe(200);
  expect(reading.complete).toBe(true);
});
