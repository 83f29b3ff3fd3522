import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

/**
 * Headless Chromium for the tests that look at narwhal's status page as a person would: Debian's
 * `chromium` package driven through playwright-core (which never downloads a browser of its own).
 */

/** The browser binary; CHROMIUM_PATH overrides Debian's. */
export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** Flags for a quiet browser on a machine without a display, a sandbox, or the internet. */
const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

/**
 * Whether Chromium runs here. Without it the suite is skipped loudly, except on CI (`CI=true`), where
 * a missing browser must fail the run instead of hiding the suite. Use as
 * `describe.skipIf(!requireChromium())(…)`.
 */
export function requireChromium(): boolean {
  const probe = spawnSync(CHROMIUM_PATH, ['--version'], { encoding: 'utf8', timeout: 30_000 });
  if (probe.status === 0) return true;
  const reason = probe.error ? probe.error.message : (probe.stderr || probe.stdout).trim();
  if (process.env.CI === 'true') {
    throw new Error(`The browser suite needs Chromium at ${CHROMIUM_PATH} (CI=true): ${reason}`);
  }
  console.warn(
    `\n*** SKIPPING the status page browser suite: ${CHROMIUM_PATH} does not run (${reason}).\n` +
      '*** Install it (apt-get install chromium) to run it; on CI this is an error.\n',
  );
  return false;
}

/** A tab, with what went wrong in it: console errors, uncaught exceptions, failed requests. */
export interface Tab {
  readonly page: Page;
  readonly problems: string[];
  /** Every URL the page asked for. */
  readonly requested: string[];
}

/** A browser with a fresh profile of its own, removed on close. */
export class Browser {
  private constructor(
    readonly context: BrowserContext,
    private readonly profile: string,
  ) {}

  /**
   * `httpCredentials`: what the browser answers a 401 with a Basic challenge with, as a person
   * typing them into the browser's login dialog would.
   */
  static async launch(
    options: { httpCredentials?: { username: string; password: string } } = {},
  ): Promise<Browser> {
    const profile = await mkdtemp(join(tmpdir(), 'narwhal-chromium-'));
    // launchPersistentContext passes `--user-data-dir=<profile>`: a fresh one for every run.
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: CHROMIUM_FLAGS,
      viewport: { width: 1200, height: 900 },
      httpCredentials: options.httpCredentials,
    });
    return new Browser(context, profile);
  }

  /** A new tab whose problems are recorded from the start. */
  async tab(options: { width?: number; height?: number } = {}): Promise<Tab> {
    const page = await this.context.newPage();
    if (options.width !== undefined) {
      await page.setViewportSize({ width: options.width, height: options.height ?? 900 });
    }
    const problems: string[] = [];
    const requested: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning')
        problems.push(`console ${m.type()}: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`uncaught: ${e.message}`));
    page.on('request', (r) => requested.push(r.url()));
    page.on('requestfailed', (r) => {
      problems.push(`request failed: ${r.url()} (${r.failure()?.errorText ?? '?'})`);
    });
    page.on('response', (r) => {
      if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`);
    });
    return { page, problems, requested };
  }

  async close(): Promise<void> {
    await this.context.close();
    await rm(this.profile, { recursive: true, force: true });
  }
}

/** The value of `expression` in the page (a string: the tests' TypeScript knows Node, not the DOM). */
export function inPage<T>(page: Page, expression: string): Promise<T> {
  return page.evaluate<T>(expression);
}
