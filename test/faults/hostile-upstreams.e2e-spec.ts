import { performance } from 'node:perf_hooks';
import { beforeAll, describe, expect, it } from 'vitest';
import { serializeNarInfo } from '../../src/nix/narinfo';
import { xzBomb, zstdBomb } from '../support/bombs';
import type { Behaviour } from '../support/fake-upstream';
import { latencyFigures, printFigures, sampleDuring, scaled } from '../support/figures';
import { readOrNull } from '../support/files';
import { httpGet, type Received } from '../support/http-client';
import { narInfoStored, objectPath, spoolsRemoved, storedSize } from '../support/narwhal-app';
import { useNarwhalProcess } from '../support/narwhal-process';
import { closedPortUrl } from '../support/ports';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, sign, withFile, type StorePathFixture } from '../support/store-paths';

/**
 * Upstreams that attack narwhal (a process): a narinfo over 1 MiB, signed NarSizes that lie,
 * decompression bombs, Content-Length that lies both ways, redirect loops and redirects to a closed
 * port, HTML where a narinfo or a NAR should be, and bodies dripped a few bytes at a time. For each,
 * the client gets a 404 for the narinfo or a NAR answer that is not a clean 200, nothing is stored,
 * and the process lives on. While each attack runs, an unrelated client asks for /nix-cache-info
 * one request after another: its latency is printed (a figure, not asserted).
 */

const key = makeKey('up-a-1');
const MiB = 1024 * 1024;
const XZ_BOMB_BYTES = scaled(256 * MiB, 1024 * MiB);
const ZSTD_BOMB_BYTES = 4 * 1024 * MiB;
const HTML = Buffer.from(
  '<!DOCTYPE html>\n<html><head><title>Welcome</title></head><body>Captive portal</body></html>\n',
);

const t = useNarwhalProcess(key, {
  CACHE_UPSTREAM_RESPONSE_HEADER_TIMEOUT: '2s',
  CACHE_UPSTREAM_BODY_TIMEOUT: '2s',
  CACHE_UPSTREAM_NARINFO_TIMEOUT: '2s',
  CACHE_UPSTREAM_MIN_RATE: '4K',
  // Each attack is its own store path; a failing upstream must not be skipped for the next.
  CACHE_UPSTREAM_BREAKER_FAILURES: '0',
});
let closedPort: string;
beforeAll(async () => {
  closedPort = await closedPortUrl();
});

const narInfoText = (f: StorePathFixture) => Buffer.from(serializeNarInfo(f.narInfo));

/** `body` served with a Content-Length `delta` bytes off (the connection stays open). */
function lyingLength(body: Buffer, delta: number, contentType?: string): Behaviour {
  return {
    kind: 'serve',
    body,
    contentType,
    headers: { 'content-length': String(body.length + delta) },
  };
}

/** `body` served `chunkBytes` at a time, one chunk every `delayMs`. */
function drip(body: Buffer, chunkBytes: number, delayMs: number, contentType?: string): Behaviour {
  return { kind: 'serve', body, contentType, chunkBytes, chunkDelayMs: delayMs };
}

/** Runs `attack` while an unrelated client times /nix-cache-info, and prints both. */
async function underAttack(name: string, attack: () => Promise<Received>): Promise<Received> {
  const t0 = performance.now();
  const { result, timed } = await sampleDuring(`${t.narwhal.url}/nix-cache-info`, attack);
  printFigures(`hostile upstream: ${name}`, {
    'client status': result.status,
    'client complete': String(result.complete),
    'client bytes': result.bytes,
    'attack ms': Math.round(performance.now() - t0),
    ...latencyFigures(timed, 'nix-cache-info '),
  });
  expect(Object.keys(timed.statuses)).toEqual(['200']);
  return result;
}

async function nothingStored(f: StorePathFixture): Promise<void> {
  await spoolsRemoved(t.narwhal);
  expect(storedSize(t.narwhal, f.narName)).toBeNull();
  expect(await readOrNull(objectPath(t.narwhal, f.narName))).toBeNull();
}

function alive(): void {
  expect(t.narwhal.exitStatus(), t.narwhal.logs().slice(-4000)).toBeNull();
}

describe('narinfo attacks: the lookup is a 404 and nothing is stored', () => {
  const NARINFO = 'text/x-nix-narinfo';
  const cases: [string, (f: StorePathFixture) => Behaviour][] = [
    [
      'a narinfo over 1 MiB',
      (f) => ({
        kind: 'serve',
        body: Buffer.concat([narInfoText(f), Buffer.from(`X-Padding: ${'p'.repeat(2 * MiB)}\n`)]),
        contentType: NARINFO,
      }),
    ],
    ['Content-Length below the narinfo sent', (f) => lyingLength(narInfoText(f), -60, NARINFO)],
    ['Content-Length above the narinfo sent', (f) => lyingLength(narInfoText(f), 500, NARINFO)],
    [
      'a redirect loop',
      (f) => ({ kind: 'redirect', location: `${t.upstream.url}/${f.hash}.narinfo` }),
    ],
    [
      'a redirect to a closed port',
      (f) => ({ kind: 'redirect', location: `${closedPort}/${f.hash}.narinfo` }),
    ],
    ['a 200 text/html page', () => ({ kind: 'serve', body: HTML, contentType: 'text/html' })],
    ['a narinfo dripped 2 bytes every 300 ms', (f) => drip(narInfoText(f), 2, 300, NARINFO)],
  ];

  it.each(cases)('%s', async (name, route) => {
    const f = await makeStorePath([key]);
    t.upstream.set(`/${f.hash}.narinfo`, route(f));
    const res = await underAttack(name, () => httpGet(`${t.narwhal.url}/${f.hash}.narinfo`));
    expect(res.status).toBe(404);
    expect(narInfoStored(t.narwhal, f.hash)).toBe(false);
    alive();
  });
});

describe('NAR attacks: the NAR answer is never a clean 200 and nothing is stored', () => {
  interface NarAttack {
    /** What the upstream publishes instead of the honest store path (a signed lie, a bomb). */
    fixture?: (f: StorePathFixture) => StorePathFixture;
    /** How the upstream answers for the NAR file. */
    route?: (f: StorePathFixture) => Behaviour;
  }
  const withNarSize = (f: StorePathFixture, narSize: number): StorePathFixture => ({
    ...f,
    narInfo: sign({ ...f.narInfo, narSize }, [key]),
  });
  const cases: [string, NarAttack][] = [
    [
      'a signed NarSize below the NAR (decodes past it)',
      { fixture: (f) => withNarSize(f, f.narInfo.narSize - 4096) },
    ],
    [
      'a signed NarSize above the NAR (ends short of it)',
      { fixture: (f) => withNarSize(f, f.narInfo.narSize + 4096) },
    ],
    [
      `a zstd bomb (${ZSTD_BOMB_BYTES / MiB} MiB behind NarSize 1 MiB)`,
      { fixture: (f) => withFile(f, zstdBomb(ZSTD_BOMB_BYTES), 'zstd', [key], { narSize: MiB }) },
    ],
    [
      `an xz bomb (${XZ_BOMB_BYTES / MiB} MiB behind NarSize 1 MiB)`,
      { fixture: (f) => withFile(f, xzBomb(XZ_BOMB_BYTES), 'xz', [key], { narSize: MiB }) },
    ],
    ['Content-Length below the NAR sent', { route: (f) => lyingLength(f.file, -10_000) }],
    [
      'Content-Length above the NAR sent (connection kept open)',
      { route: (f) => lyingLength(f.file, 10_000) },
    ],
    [
      'Content-Length above the NAR sent (connection closed)',
      { route: (f) => ({ kind: 'truncate', body: f.file }) },
    ],
    [
      'a redirect loop',
      { route: (f) => ({ kind: 'redirect', location: `${t.upstream.url}/nar/${f.narName}` }) },
    ],
    [
      'a redirect to a closed port',
      { route: (f) => ({ kind: 'redirect', location: `${closedPort}/nar/${f.narName}` }) },
    ],
    [
      'a 200 text/html page',
      { route: () => ({ kind: 'serve', body: HTML, contentType: 'text/html' }) },
    ],
    [
      'a NAR dripped 512 bytes every 200 ms (below --cache-upstream-min-rate)',
      { route: (f) => drip(f.file, 512, 200) },
    ],
  ];

  it.each(cases)('%s', async (name, attack) => {
    const honest = await makeStorePath([key], { size: 200_000 });
    const f = attack.fixture?.(honest) ?? honest;
    t.upstream.publish(f);
    if (attack.route) t.upstream.set(`/nar/${f.narName}`, attack.route(f));
    expect((await httpGet(`${t.narwhal.url}/${f.hash}.narinfo`)).status).toBe(200);
    const res = await underAttack(name, () => httpGet(`${t.narwhal.url}/nar/${f.narName}`));
    expect(res.status === 200 && res.complete).toBe(false);
    await nothingStored(f);
    alive();
  });
});

it('serves an honest store path afterwards', async () => {
  const f = await makeStorePath([key], { size: 200_000 });
  t.upstream.publish(f);
  expect((await httpGet(`${t.narwhal.url}/${f.hash}.narinfo`)).status).toBe(200);
  const nar = await httpGet(`${t.narwhal.url}/nar/${f.narName}`, { keepBody: true });
  expect(nar.status).toBe(200);
  expect(nar.complete).toBe(true);
  expect(nar.body.equals(f.file)).toBe(true);
  alive();
});
