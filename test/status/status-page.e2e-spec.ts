import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Browser, inPage, requireChromium, type Tab } from '../support/browser';
import { FakeUpstream } from '../support/fake-upstream';
import { download, httpGet } from '../support/http-client';
import { NarwhalProcess, runNarwhalCommand } from '../support/narwhal-process';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, type StorePathFixture } from '../support/store-paths';
import { pollUntil } from '../support/wait';

/**
 * The status page in a real browser (headless Chromium) against `narwhal serve` built to dist/ —
 * so the page's files come from what `npm run build` ships. While a throttled cold download runs,
 * the progress bar must move without a reload; after more traffic the counters must change; the
 * page must load nothing from elsewhere and log no error; it must fit a phone's width and follow a
 * dark color scheme; every chart and bar must have an accessible name. Screenshots go to
 * test-output/ (with NARWHAL_UPDATE_SCREENSHOT=1 the desktop one also to docs/status-page.png, the
 * README's picture).
 */

const REPO_ROOT = resolve(__dirname, '..', '..');
const OUTPUT_DIR = join(REPO_ROOT, 'test-output');
const HOSTNAME = 'narwhal-status';
const MiB = 1024 * 1024;
/** The cold download: 6 MiB at 384 KiB/s, about 16 s, several page refreshes (every 2 s). */
const BIG_NAR_BYTES = 6 * MiB;
const THROTTLE_BYTES_PER_SECOND = 384 * 1024;
/** How long to wait for the page to show something (it refreshes every 2 s). */
const SOON = { timeout: 30_000, interval: 200 };

describe.skipIf(!requireChromium())('the status page in a real browser', () => {
  const key = makeKey('up-browser-1');
  let upstream: FakeUpstream;
  let sick: FakeUpstream;
  let narwhal: NarwhalProcess;
  let dataPath: string;
  let browser: Browser;
  const tabs: Tab[] = [];

  const get = (path: string) => httpGet(`${narwhal.url}${path}`, { keepBody: true });

  async function openTab(path: string, options?: { width: number; height: number }): Promise<Page> {
    const tab = await browser.tab(options);
    tabs.push(tab);
    await tab.page.goto(`${narwhal.url}${path}`);
    await tab.page.locator('#hostname', { hasText: HOSTNAME }).waitFor();
    return tab.page;
  }

  /** A store path narwhal has fetched and served (narinfo miss then hits, NAR download then hits). */
  async function traffic(size: number): Promise<StorePathFixture> {
    const f = await makeStorePath([key], { size, compression: 'none' });
    upstream.publish(f);
    for (let i = 0; i < 3; i++) expect((await get(`/${f.hash}.narinfo`)).status).toBe(200);
    expect((await get(`/nar/${f.narName}`)).status).toBe(200);
    // Once it is stored, a storage hit (until then a GET joins the download still committing).
    const hit = await pollUntil(
      () => get(`/nar/${f.narName}`),
      (r) => r.headers['x-narwhal-source'] === 'storage',
      { timeoutMs: 10_000, intervalMs: 100 },
    );
    expect(hit.body.equals(f.file)).toBe(true);
    return f;
  }

  beforeAll(async () => {
    await mkdir(OUTPUT_DIR, { recursive: true });
    upstream = await FakeUpstream.start();
    upstream.set('/nix-cache-info', {
      kind: 'serve',
      body: Buffer.from('StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n'),
      contentType: 'text/x-nix-cache-info',
    });
    // A second upstream that answers 503 to everything: unreachable, with errors.
    sick = await FakeUpstream.start();
    sick.fallback = { kind: 'status', status: 503 };
    dataPath = await mkdtemp(join(tmpdir(), 'narwhal-status-page-'));
    narwhal = await NarwhalProcess.start({
      dataPath,
      hostname: HOSTNAME,
      upstreamUrls: [`${upstream.url}?priority=10`, `${sick.url}?priority=20`],
      upstreamPublicKeys: [key.publicText],
      env: { CACHE_MAX_SIZE: '64M' },
    });
    browser = await Browser.launch();
  });

  afterAll(async () => {
    await browser?.close();
    await narwhal?.stop();
    await upstream?.close();
    await sick?.close();
    if (dataPath) await rm(dataPath, { recursive: true, force: true });
  });

  it('shows a running download with a live progress bar, then the counters after it', async () => {
    // Something for every part of the page: hits and misses, failures of each kind.
    for (const size of [300_000, 700_000, 1_200_000]) await traffic(size);
    const unsigned = await makeStorePath([makeKey('evil-1')]);
    upstream.setNarInfo(unsigned.hash, unsigned.narInfo);
    expect((await get(`/${unsigned.hash}.narinfo`)).status).toBe(404);
    const corrupt = await makeStorePath([key], { size: 200_000 });
    upstream.publish(corrupt);
    upstream.corrupt(corrupt.narName);
    expect((await get(`/${corrupt.hash}.narinfo`)).status).toBe(200);
    expect((await get(`/nar/${corrupt.narName}`)).complete).toBe(false);
    upstream.clearFaults();
    const nowhere = await makeStorePath([key]);
    expect((await get(`/${nowhere.hash}.narinfo`)).status).toBe(404); // the sick upstream: 503

    const page = await openTab('/');
    const narCounts = await page.locator('#nar-counts').textContent();
    const served = await page.locator('#served-total').textContent();

    // The cold download, throttled by the upstream.
    const big = await makeStorePath([key], { size: BIG_NAR_BYTES, compression: 'none' });
    upstream.publish(big);
    expect((await get(`/${big.hash}.narinfo`)).status).toBe(200);
    upstream.throttle(THROTTLE_BYTES_PER_SECOND);
    const client = download(`${narwhal.url}/nar/${big.narName}`);
    try {
      const bar = page.getByRole('progressbar', { name: `Download of ${big.narName}` });
      const row = page.locator(`li[data-download="${big.narName}"]`);
      await expect.poll(() => bar.count(), SOON).toBe(1);
      const first = Number(await bar.getAttribute('value'));
      expect(Number(await bar.getAttribute('max'))).toBe(big.file.length);
      // The bar moves without a reload (the page refreshes itself every 2 s).
      await expect
        .poll(async () => Number(await bar.getAttribute('value')), SOON)
        .toBeGreaterThan(first);
      const label = await bar.getAttribute('aria-label');
      expect(label).toMatch(/ of 6\.00 MiB \(\d+ %\)$/);
      await expect.poll(() => row.textContent(), SOON).toMatch(/1 reader/);
      await expect.poll(() => row.textContent(), SOON).toMatch(/[\d.]+ [KM]iB\/s/);
      expect(await row.textContent()).toContain(narwhal.url); // the holder: this instance
      await page.screenshot({ path: join(OUTPUT_DIR, 'status-page.png'), fullPage: true });
      if (process.env.NARWHAL_UPDATE_SCREENSHOT === '1') {
        await copyFile(
          join(OUTPUT_DIR, 'status-page.png'),
          join(REPO_ROOT, 'docs', 'status-page.png'),
        );
      }
    } finally {
      upstream.throttle(null);
    }
    const done = await client.done;
    expect(done.complete).toBe(true);

    // Once it is stored the row goes, and the counters show the new download and bytes.
    await page.locator(`li[data-download="${big.narName}"]`).waitFor({ state: 'detached' });
    await page.locator('#downloads-empty').waitFor({ state: 'visible' });
    await expect.poll(() => page.locator('#nar-counts').textContent(), SOON).not.toBe(narCounts);
    await expect.poll(() => page.locator('#served-total').textContent(), SOON).not.toBe(served);

    // More traffic: the narinfo counters and the chart's description follow.
    const narinfoCounts = await page.locator('#narinfo-counts').textContent();
    const chart = page.getByRole('img', { name: /^Hit ratio over the last hour/ });
    const chartLabel = await chart.getAttribute('aria-label');
    await traffic(100_000);
    await expect
      .poll(() => page.locator('#narinfo-counts').textContent(), SOON)
      .not.toBe(narinfoCounts);
    await expect.poll(() => chart.getAttribute('aria-label'), SOON).not.toBe(chartLabel);
  });

  it('shows storage against the limit, both upstreams and the failures, newest first', async () => {
    const page = await openTab('/_narwhal/status');
    const meter = page.getByRole('meter', { name: /^Storage used: .* of 64\.0 MiB used/ });
    await expect.poll(() => meter.count(), SOON).toBe(1);
    expect(Number(await meter.getAttribute('max'))).toBe(64 * MiB);
    expect(Number(await meter.getAttribute('value'))).toBeGreaterThan(BIG_NAR_BYTES);
    await expect.poll(() => page.locator('#lru-next').textContent(), SOON).toMatch(/^in /);

    const up = page.locator(`li[data-upstream="${upstream.url}"]`);
    const down = page.locator(`li[data-upstream="${sick.url}"]`);
    await expect.poll(() => up.locator('.pill').first().textContent(), SOON).toBe('reachable');
    await expect.poll(() => down.locator('.pill').first().textContent(), SOON).toBe('unreachable');
    expect(await down.textContent()).toContain('HTTP 503');

    const kinds = await inPage<string[]>(
      page,
      `[...document.querySelectorAll('#failures li')].map((li) => li.dataset.kind)`,
    );
    // Reported in this order: bad signature, hash mismatch, the sick upstream's 503s.
    const at = (kind: string) => kinds.indexOf(kind);
    expect(at('bad-signature')).toBeGreaterThan(at('hash-mismatch'));
    expect(at('hash-mismatch')).toBeGreaterThan(at('upstream-error'));
    expect(at('upstream-error')).toBeGreaterThanOrEqual(0);
  });

  it('names every chart and bar, fits a phone, and follows a dark color scheme', async () => {
    const page = await openTab('/');
    const unnamed = await inPage<string[]>(
      page,
      `[...document.querySelectorAll('svg, progress, meter')]
        .filter((e) => !e.hidden && !e.getAttribute('aria-label')?.trim())
        .map((e) => e.outerHTML.slice(0, 80))`,
    );
    expect(unnamed).toEqual([]);
    for (const svg of await page.locator('svg').all()) {
      expect(await svg.getAttribute('role')).toBe('img');
    }
    expect(await page.getByRole('img', { name: /^Bytes over the last hour/ }).count()).toBe(1);

    const phone = await openTab('/', { width: 390, height: 844 });
    await phone.emulateMedia({ colorScheme: 'dark' });
    const fits = await inPage<{ scroll: number; width: number }>(
      phone,
      `({ scroll: document.documentElement.scrollWidth, width: document.documentElement.clientWidth })`,
    );
    expect(fits.scroll).toBeLessThanOrEqual(fits.width);
    const background = (p: Page) =>
      inPage<string>(p, 'getComputedStyle(document.body).backgroundColor');
    const lightness = (rgb: string) =>
      rgb
        .match(/\d+/g)!
        .slice(0, 3)
        .reduce((s, v) => s + Number(v), 0) / 3;
    expect(lightness(await background(phone))).toBeLessThan(60);
    expect(lightness(await background(page))).toBeGreaterThan(200);
    await phone.screenshot({
      path: join(OUTPUT_DIR, 'status-page-phone-dark.png'),
      fullPage: true,
    });
  });

  it('loaded nothing from elsewhere and logged no error', () => {
    expect(tabs.length).toBeGreaterThan(0);
    for (const tab of tabs) {
      expect(tab.problems).toEqual([]);
      const foreign = tab.requested.filter(
        (u) => !u.startsWith(`${narwhal.url}/`) && !u.startsWith('data:'),
      );
      expect(foreign).toEqual([]);
      expect(tab.requested.some((u) => u.includes('status.json'))).toBe(true);
    }
  });
});

describe.skipIf(!requireChromium())('the status page behind --cache-require-read-token', () => {
  let narwhal: NarwhalProcess;
  let upstream: FakeUpstream;
  let dataPath: string;
  let token: string;
  const browsers: Browser[] = [];

  beforeAll(async () => {
    upstream = await FakeUpstream.start();
    dataPath = await mkdtemp(join(tmpdir(), 'narwhal-status-token-'));
    const env = { CACHE_REQUIRE_READ_TOKEN: 'true' };
    narwhal = await NarwhalProcess.start({
      dataPath,
      hostname: HOSTNAME,
      upstreamUrls: [upstream.url],
      upstreamPublicKeys: [makeKey('up-browser-2').publicText],
      env,
    });
    const made = await runNarwhalCommand(['token', 'create', '--name', 'ops', '--perm', 'read'], {
      ...env,
      CACHE_DATA_PATH: dataPath,
    });
    expect(made.code, made.stderr).toBe(0);
    token = made.stdout.trim();
  });

  afterAll(async () => {
    for (const b of browsers) await b.close();
    await narwhal?.stop();
    await upstream?.close();
    if (dataPath) await rm(dataPath, { recursive: true, force: true });
  });

  async function launch(password?: string): Promise<Page> {
    const browser = await Browser.launch(
      password === undefined ? {} : { httpCredentials: { username: 'anyone', password } },
    );
    browsers.push(browser);
    return (await browser.tab()).page;
  }

  it('a browser without the token is refused; with it (typed into its login dialog) it sees the live page', async () => {
    const challenge = await httpGet(`${narwhal.url}/`, { headers: { accept: 'text/html' } });
    expect(challenge.status).toBe(401);
    expect(challenge.headers['www-authenticate']).toBe('Basic realm="narwhal"');
    // Challenged, a headless browser has nobody to type into its login dialog: it gives up.
    await expect((await launch()).goto(`${narwhal.url}/`)).rejects.toThrow(
      'ERR_INVALID_AUTH_CREDENTIALS',
    );
    // Wrong credentials get the challenge again: the page never shows.
    expect((await (await launch('not-the-token')).goto(`${narwhal.url}/`))?.status()).toBe(401);

    const page = await launch(token);
    const answered: number[] = [];
    page.on('response', (r) => {
      if (r.url().includes('status.json')) answered.push(r.status());
    });
    const res = await page.goto(`${narwhal.url}/`);
    expect(res?.status()).toBe(200);
    await page.locator('#hostname', { hasText: HOSTNAME }).waitFor();
    // The page keeps polling its JSON with the same credentials.
    await expect.poll(() => answered.filter((s) => s === 200).length, SOON).toBeGreaterThan(1);
    expect(answered.filter((s) => s !== 200 && s !== 401)).toEqual([]);
  });
});
