import { gunzipSync } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import type { StatusSnapshot } from '../../src/status/status-snapshot';
import { VERSION } from '../../src/version';
import { FakeUpstream } from '../support/fake-upstream';
import { download } from '../support/http-client';
import { HOSTNAME, useNarwhal, waitStored } from '../support/narwhal-app';
import { makeKey } from '../support/signing-keys';
import { makeStorePath } from '../support/store-paths';
import { pollUntil } from '../support/wait';

/**
 * The status page and its JSON through Fastify inject (and a real socket for a running download):
 * content negotiation at `/`, the page's files, and what the snapshot says after real traffic —
 * counters, a download in flight, storage and LRU, upstreams, recent failures — without ever
 * showing an upstream's credentials or query string.
 */

const BROWSER_ACCEPT =
  'text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8';
/** Credentials and a token in the upstream URL: neither may ever appear on the page. */
const SECRET_PASSWORD = 'hunter2-pw';
const SECRET_TOKEN = 'tok-sekrit-42';

const key = makeKey('up-status-1');
const upstream = new FakeUpstream();
upstream.set('/nix-cache-info', {
  kind: 'serve',
  body: Buffer.from('StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n'),
  contentType: 'text/x-nix-cache-info',
});
const nw = useNarwhal([upstream], () => ({
  'cache-upstream-url': `http://narwhal:${SECRET_PASSWORD}@${upstream.url.slice('http://'.length)}?priority=10&token=${SECRET_TOKEN}`,
  'cache-upstream-public-key': key.publicText,
  'cache-upstream-response-header-timeout': '2s',
  'cache-upstream-body-timeout': '5s',
  'cache-max-size': '1G',
  // Every upstream error reaches the failures list: no upstream is skipped after a few.
  'cache-upstream-breaker-failures': '0',
  // The exact NAR counts are of clients' requests; NAR prefetch would add downloads of its own.
  'cache-prefetch-nars': 'false',
}));
beforeAll(() => nw.listen());

const get = (url: string, accept?: string) =>
  nw.app.inject({ method: 'GET', url, headers: accept === undefined ? {} : { accept } });
const head = (url: string, accept?: string) =>
  nw.app.inject({ method: 'HEAD', url, headers: accept === undefined ? {} : { accept } });

async function snapshot(): Promise<StatusSnapshot> {
  const res = await get('/_narwhal/status.json');
  expect(res.statusCode).toBe(200);
  expect(res.headers['cache-control']).toBe('no-store');
  return res.json<StatusSnapshot>();
}

describe('the status page and its files', () => {
  it('GET / with a browser Accept header is the page; other clients keep the JSON', async () => {
    const page = await get('/', BROWSER_ACCEPT);
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(page.headers.vary).toBe('Accept');
    expect(page.body).toContain('<title>narwhal status</title>');
    // Links relative to `/`, into _narwhal/, so a path prefix in front of narwhal keeps working.
    expect(page.body).toMatch(/src="_narwhal\/status\.js\?v=[0-9a-f]{12}"/);
    expect(page.body).toContain('data-status-url="_narwhal/status.json"');

    const about = { hostname: HOSTNAME, version: VERSION };
    for (const accept of [
      undefined,
      '*/*',
      'application/json',
      'application/json, text/html;q=0.9',
      'text/*',
    ]) {
      const res = await get('/', accept);
      expect({ accept, type: res.headers['content-type'] }).toEqual({
        accept,
        type: 'application/json; charset=utf-8',
      });
      expect(res.json()).toMatchObject(about);
      expect(res.headers.vary).toBe('Accept');
    }
  });

  it('HEAD / answers like GET for each kind of client', async () => {
    for (const accept of [BROWSER_ACCEPT, undefined]) {
      const g = await get('/', accept);
      const h = await head('/', accept);
      expect(h.statusCode).toBe(200);
      expect(h.body).toBe('');
      expect(h.headers['content-type']).toBe(g.headers['content-type']);
      expect(Number(h.headers['content-length'])).toBe(Buffer.byteLength(g.body));
    }
  });

  it('serves the page at /_narwhal/status with its CSS and script, and nothing from elsewhere', async () => {
    const page = await get('/_narwhal/status');
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
    const csp = String(page.headers['content-security-policy']);
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("connect-src 'self'");
    expect(page.headers['x-content-type-options']).toBe('nosniff');
    // No absolute URL to anywhere: every asset is narwhal's own.
    expect(page.body).not.toMatch(/(src|href)="(https?:)?\/\//);

    const links = [...page.body.matchAll(/(?:src|href)="(status\.(?:css|js)\?v=[0-9a-f]+)"/g)];
    expect(links.map((m) => m[1].split('?')[0]).sort()).toEqual(['status.css', 'status.js']);
    for (const [, link] of links) {
      const res = await get(`/_narwhal/${link}`);
      expect(res.statusCode).toBe(200);
      expect(res.headers['cache-control']).toContain('immutable');
      expect(res.body.length).toBeGreaterThan(500);
    }
    expect((await get('/_narwhal/status.css')).headers['content-type']).toBe(
      'text/css; charset=utf-8',
    );
    expect((await get('/_narwhal/status.js')).headers['content-type']).toBe(
      'text/javascript; charset=utf-8',
    );
    const h = await head('/_narwhal/status');
    expect(h.statusCode).toBe(200);
    expect(Number(h.headers['content-length'])).toBe(page.rawPayload.length);
  });
});

describe('the status snapshot (/_narwhal/status.json)', () => {
  it('names this instance and its backends', async () => {
    const s = await snapshot();
    expect(s.instance).toMatchObject({ hostname: HOSTNAME, version: VERSION });
    // What it advertises to its peers (from --server-addr here: no --cache-advertise-url).
    expect(s.instance.url).toMatch(/^http:\/\/[^/]+:8501$/);
    expect(s.instance.publicKey).toMatch(new RegExp(`^${HOSTNAME}:`));
    expect(s.backends).toEqual({
      database: 'sqlite',
      storage: 'filesystem',
      lock: { backend: 'local', healthy: true, degraded: false },
    });
    expect(s.storage.lru).toMatchObject({ maxBytes: 1024 ** 3, schedule: '0 2 * * *' });
    expect(Date.parse(s.storage.lru.nextRunAt!)).toBeGreaterThan(Date.now());
    expect(s.history.intervalSeconds).toBe(10);
  });

  it('counts narinfo hits and misses, NAR downloads and hits, bytes served and fetched', async () => {
    const before = await snapshot();
    const f = await makeStorePath([key], { size: 100_000 });
    upstream.publish(f);
    expect((await get(`/${f.hash}.narinfo`)).statusCode).toBe(200); // miss
    expect((await get(`/${f.hash}.narinfo`)).statusCode).toBe(200); // hit
    expect((await get(`/nar/${f.narName}`)).rawPayload.equals(f.file)).toBe(true); // download
    await waitStored(nw, f.narName, f.file);
    expect((await get(`/nar/${f.narName}`)).rawPayload.equals(f.file)).toBe(true); // hit
    const after = await snapshot();

    const grew = (a: number, b: number) => b - a;
    expect(grew(before.totals.narinfo.miss, after.totals.narinfo.miss)).toBe(1);
    expect(grew(before.totals.narinfo.hit, after.totals.narinfo.hit)).toBe(1);
    expect(grew(before.totals.nar.download, after.totals.nar.download)).toBe(1);
    expect(grew(before.totals.nar.hit, after.totals.nar.hit)).toBe(1);
    expect(grew(before.totals.upstreamBytes, after.totals.upstreamBytes)).toBe(f.file.length);
    expect(grew(before.totals.servedBytes.total, after.totals.servedBytes.total)).toBe(
      2 * f.file.length,
    );
    expect(after.totals.nar.hitRatio).toBeCloseTo(
      after.totals.nar.hit / (after.totals.nar.hit + after.totals.nar.download),
    );
    // The chart's points (up to now, since the first sample at start) add up to the same traffic.
    const sum = (pick: (p: StatusSnapshot['history']['points'][number]) => number) =>
      after.history.points.reduce((n, p) => n + pick(p), 0);
    expect(sum((p) => p.servedBytes)).toBe(after.totals.servedBytes.total);
    expect(sum((p) => p.upstreamBytes)).toBe(after.totals.upstreamBytes);
    expect(sum((p) => p.narinfo.hit + p.narinfo.miss + p.narinfo.notFound)).toBe(
      after.totals.narinfo.hit + after.totals.narinfo.miss + after.totals.narinfo.notFound,
    );
    expect(after.storage.usedBytes).toBeGreaterThanOrEqual(f.file.length);
    const [up] = after.upstreams;
    expect(up.requests).toBeGreaterThan(before.upstreams[0].requests);
    expect(up.meanResponseMs).not.toBeNull();
  });

  it('shows a running download with its progress, rate, readers and holder', async () => {
    const f = await makeStorePath([key], { size: 600_000, compression: 'none' });
    upstream.publish(f);
    expect((await get(`/${f.hash}.narinfo`)).statusCode).toBe(200);
    upstream.throttle(150_000);
    try {
      const client = download(`${nw.url}/nar/${f.narName}`);
      const seen = await pollUntil(
        () => snapshot(),
        (s) => (s.downloads.here.find((d) => d.name === f.narName)?.written ?? 0) > 100_000,
        { timeoutMs: 20_000, intervalMs: 200 },
      );
      const d = seen.downloads.here.find((x) => x.name === f.narName);
      expect(d).toMatchObject({
        holder: seen.instance.url,
        length: f.file.length,
        readers: 1,
        state: 'receiving',
      });
      expect(d!.written).toBeLessThan(f.file.length);
      expect(d!.bytesPerSecond).toBeGreaterThan(0);
      const got = await client.done;
      expect(got.complete).toBe(true);
      await waitStored(nw, f.narName, f.file);
      const done = await pollUntil(
        () => snapshot(),
        (s) => s.downloads.here.length === 0,
      );
      expect(done.downloads.here).toEqual([]);
    } finally {
      upstream.throttle(null);
    }
  });

  it('lists upstreams by base URL with their probe result, never their credentials or query', async () => {
    const s = await pollUntil(snapshot, (x) => x.upstreams[0].reachable !== null);
    expect(s.upstreams).toHaveLength(1);
    expect(s.upstreams[0]).toMatchObject({ url: upstream.url, priority: 10, reachable: true });
    expect(s.upstreams[0].latencyMs).toBeGreaterThanOrEqual(0);
  });

  it('lists recent failures newest first: bad signatures, hash mismatches, upstream errors', async () => {
    // A narinfo signed by a key narwhal does not trust.
    const unsigned = await makeStorePath([makeKey('evil-1')]);
    upstream.setNarInfo(unsigned.hash, unsigned.narInfo);
    expect((await get(`/${unsigned.hash}.narinfo`)).statusCode).toBe(404);

    // A NAR whose bytes do not match its FileHash.
    const corrupt = await makeStorePath([key], { size: 50_000 });
    upstream.publish(corrupt);
    upstream.corrupt(corrupt.narName);
    expect((await get(`/${corrupt.hash}.narinfo`)).statusCode).toBe(200);
    await get(`/nar/${corrupt.narName}`).catch(() => null);
    upstream.clearFaults();

    // An upstream that answers 500 for a narinfo, twice: one entry, counted twice.
    const broken = await makeStorePath([key]);
    upstream.set(`/${broken.hash}.narinfo`, { kind: 'status', status: 500 });
    expect((await get(`/${broken.hash}.narinfo`)).statusCode).toBe(404);
    const again = await makeStorePath([key]);
    upstream.set(`/${again.hash}.narinfo`, { kind: 'status', status: 500 });
    expect((await get(`/${again.hash}.narinfo`)).statusCode).toBe(404);

    // A plain miss (404 upstream) is not a failure.
    const missing = await makeStorePath([key]);
    expect((await get(`/${missing.hash}.narinfo`)).statusCode).toBe(404);

    const s = await pollUntil(snapshot, (x) => x.failures.some((f) => f.kind === 'hash-mismatch'));
    const kinds = s.failures.map((f) => f.kind);
    expect(kinds.slice(0, 3)).toEqual(['upstream-error', 'hash-mismatch', 'bad-signature']);
    const [upstreamError, mismatch, badSig] = s.failures;
    expect(upstreamError).toMatchObject({
      upstream: upstream.url,
      subject: `${again.hash}.narinfo`,
      message: 'HTTP 500',
      count: 2,
    });
    expect(mismatch).toMatchObject({ upstream: upstream.url, subject: `nar/${corrupt.narName}` });
    // The flipped byte shows as a FileHash mismatch, or first as xz data the decoder refuses.
    expect(mismatch.message).toMatch(/FileHash|does not decompress/);
    expect(badSig).toMatchObject({
      upstream: upstream.url,
      subject: `${unsigned.hash}.narinfo`,
      message: 'no signature by a trusted upstream key',
    });
    expect(s.failures.some((f) => f.subject.includes(missing.hash))).toBe(false);
    expect(s.upstreams[0].errors).toBeGreaterThanOrEqual(2);
    expect(s.upstreams[0].errorsLastHour).toBe(s.upstreams[0].errors);

    // The upstream was asked with its credentials and token; none of it shows.
    const sent = upstream.requests.find((r) => r.url.startsWith(`/${again.hash}.narinfo`));
    expect(sent?.url).toContain(SECRET_TOKEN);
    expect(sent?.authorization).toBeDefined();
    const text = (await get('/_narwhal/status.json')).body;
    expect(text).not.toContain(SECRET_PASSWORD);
    expect(text).not.toContain(SECRET_TOKEN);
    expect(text).not.toContain('token=');
  });

  it('gzips a large snapshot for clients that take gzip (every browser)', async () => {
    // Twenty upstream errors of different statuses: twenty entries, a snapshot of several KB.
    for (let status = 500; status < 520; status++) {
      const f = await makeStorePath([key]);
      upstream.set(`/${f.hash}.narinfo`, { kind: 'status', status });
      expect((await get(`/${f.hash}.narinfo`)).statusCode).toBe(404);
    }
    const plain = await get('/_narwhal/status.json');
    expect(plain.headers['content-encoding']).toBeUndefined();
    expect(plain.rawPayload.length).toBeGreaterThan(4096);
    const zipped = await nw.app.inject({
      method: 'GET',
      url: '/_narwhal/status.json',
      headers: { 'accept-encoding': 'gzip, deflate, br' },
    });
    expect(zipped.headers['content-encoding']).toBe('gzip');
    expect(zipped.headers.vary).toContain('Accept-Encoding');
    expect(Number(zipped.headers['content-length'])).toBe(zipped.rawPayload.length);
    expect(zipped.rawPayload.length).toBeLessThan(plain.rawPayload.length / 2);
    const snapshot = JSON.parse(gunzipSync(zipped.rawPayload).toString()) as StatusSnapshot;
    expect(
      snapshot.failures.filter((f) => /^HTTP 5\d\d$/.test(f.message)).length,
    ).toBeGreaterThanOrEqual(20);
  });

  it('polling the page changes none of the figures it shows', async () => {
    const before = await snapshot();
    for (let i = 0; i < 3; i++) await snapshot();
    const after = await snapshot();
    expect(after.totals).toEqual(before.totals);
    expect(after.failures).toEqual(before.failures);
  });
});
