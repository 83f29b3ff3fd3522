import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildConfig } from '../config/app-config';
import { MetricsService } from '../metrics/metrics.service';
import { RecentFailures } from '../metrics/recent-failures';
import { UpstreamService } from './upstream.service';
import { UpstreamProbe } from './upstream-probe';

describe('UpstreamProbe', () => {
  let server: Server;
  let base: string;
  const seen: { url?: string; headers: IncomingHttpHeaders }[] = [];

  beforeAll(async () => {
    server = createServer((req, res) => {
      seen.push({ url: req.url, headers: req.headers });
      if (req.url?.startsWith('/ok/nix-cache-info')) res.end('StoreDir: /nix/store\n');
      else if (req.url?.startsWith('/hang/'))
        return; // never answers
      else res.writeHead(404).end();
    });
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((done) => server.close(done));
  });

  function probeFor(urls: string[]) {
    const config = buildConfig(
      {
        'cache-upstream-url': urls,
        'cache-upstream-response-header-timeout': '300ms',
        'cache-upstream-public-key': 'test-1:d8+pFuppcWDFjG1rF7876FZr+FwLvafi4PhlsZuFrUM=',
      },
      '/tmp',
    );
    const upstreams = new UpstreamService(config, new MetricsService(config), new RecentFailures());
    return { probe: new UpstreamProbe(upstreams), upstreams };
  }

  it('reports nothing until the first probe, then reachability, latency and the reason', async () => {
    const u = new URL(`${base}/ok`);
    u.username = 'user';
    u.password = 'hunter2';
    const { probe, upstreams } = probeFor([
      `${u.href}?token=abc`,
      `${base}/missing`,
      `${base}/hang`,
    ]);
    try {
      expect(probe.snapshot().map((r) => r.reachable)).toEqual([null, null, null]);
      await probe.probeAll();
      const [ok, missing, hang] = probe.snapshot();
      expect(ok).toMatchObject({ url: `${base}/ok`, reachable: true });
      expect(ok.latencyMs).toBeGreaterThanOrEqual(0);
      expect(ok.checkedAt).toEqual(expect.any(String));
      expect(missing).toMatchObject({ reachable: false, error: 'HTTP 404' });
      expect(hang).toMatchObject({ reachable: false, error: 'UND_ERR_HEADERS_TIMEOUT' });
      expect(JSON.stringify(probe.snapshot())).not.toMatch(/hunter2|token/);
      const okRequest = seen.find((s) => s.url?.startsWith('/ok/'));
      expect(okRequest?.url).toBe('/ok/nix-cache-info?token=abc');
      expect(okRequest?.headers.authorization).toBe(
        `Basic ${Buffer.from('user:hunter2').toString('base64')}`,
      );
    } finally {
      await probe.onApplicationShutdown();
      await upstreams.onApplicationShutdown();
    }
  });

  it('shares a probe round that is still running, and stops on shutdown', async () => {
    const { probe, upstreams } = probeFor([`${base}/hang`]);
    const first = probe.probeAll();
    expect(probe.probeAll()).toBe(first);
    const before = seen.length;
    await probe.onApplicationShutdown(); // aborts the hanging request
    await first;
    expect(seen.length).toBeLessThanOrEqual(before + 1);
    expect(probe.snapshot()[0].reachable).toBeNull();
    await upstreams.onApplicationShutdown();
  });
});
