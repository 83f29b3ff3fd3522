import { describe, expect, it } from 'vitest';
import { acceptsGzip, prefersHtml, StatusPage } from './status-page';

describe('prefersHtml (GET / for a browser or for a program)', () => {
  it.each([
    // Chromium, Firefox, Safari
    ['text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8', true],
    ['text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8', true],
    ['text/html', true],
    ['application/json;q=0.5, text/html', true],
    ['text/html, application/json', true],
    // programs
    [undefined, false],
    ['', false],
    ['*/*', false],
    ['text/*', false],
    ['application/json', false],
    ['application/json, text/html', false],
    ['application/json, text/html;q=0.9', false],
    ['application/*, text/html;q=0.5', false],
    ['text/html;q=0', false],
    ['text/html;q=abc', false],
  ])('%s → %s', (accept, html) => {
    expect(prefersHtml(accept)).toBe(html);
  });
});

describe('StatusPage', () => {
  it('loads its files and links them relative to where each page is served, with a content hash', async () => {
    const page = new StatusPage();
    await page.onModuleInit();
    const root = page.root.body.toString();
    const own = page.page.body.toString();
    const version = /status\.css\?v=([0-9a-f]{12})/.exec(own)?.[1];
    expect(version).toBeDefined();
    expect(own).toContain(`src="status.js?v=${version}"`);
    expect(own).toContain('data-status-url="status.json"');
    expect(root).toContain(`href="_narwhal/status.css?v=${version}"`);
    expect(root).toContain('data-status-url="_narwhal/status.json"');
    expect(root).not.toContain('{{');
    expect(page.css.type).toBe('text/css; charset=utf-8');
    expect(page.js.body.toString()).toContain('status.json');
  });

  it('names every chart and bar for screen readers', async () => {
    const page = new StatusPage();
    await page.onModuleInit();
    const html = page.page.body.toString();
    for (const svg of html.match(/<svg[^>]*>/g) ?? []) {
      expect(svg).toContain('role="img"');
      expect(svg).toMatch(/aria-label="[^"]+"/);
    }
    for (const bar of html.match(/<(meter|progress)[^>]*>/g) ?? []) {
      expect(bar).toMatch(/aria-label="[^"]+"/);
    }
    // Bars made by the script get their names there.
    expect(page.js.body.toString()).toMatch(/el\('progress', \{ 'aria-label'/);
  });
});

describe('acceptsGzip', () => {
  it.each([
    ['gzip, deflate, br, zstd', true],
    ['br;q=1.0, gzip;q=0.8', true],
    ['*', true],
    [undefined, false],
    ['', false],
    ['identity', false],
    ['br', false],
    ['gzip;q=0', false],
  ])('%s → %s', (header, gzip) => {
    expect(acceptsGzip(header)).toBe(gzip);
  });
});
