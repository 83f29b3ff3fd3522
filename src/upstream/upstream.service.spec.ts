import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildConfig, type RawSettings } from '../config/app-config';
import { MetricsService } from '../metrics/metrics.service';
import { RecentFailures } from '../metrics/recent-failures';
import { UpstreamService, UpstreamStatusError } from './upstream.service';

/** A text document over the 1 MiB narwhal reads of a narinfo. */
const BIG_BYTES = 2 * 1024 * 1024;

const TEST_KEY = 'test-1:d8+pFuppcWDFjG1rF7876FZr+FwLvafi4PhlsZuFrUM=';

function service(raw: RawSettings): UpstreamService {
  const config = buildConfig({ 'cache-upstream-public-key': TEST_KEY, ...raw }, '/tmp');
  return new UpstreamService(config, new MetricsService(config), new RecentFailures());
}

describe('upstream ordering', () => {
  it('sorts by ?priority=, lower first, and keeps the given order for ties', async () => {
    const upstreams = service({
      'cache-upstream-url': [
        'https://a.example?priority=50',
        'https://b.example',
        'https://c.example?priority=10',
        'https://d.example',
        'https://e.example?priority=40',
        'https://f.example?priority=10',
      ],
    });
    expect(upstreams.upstreams.map((u) => [u.url, u.priority])).toEqual([
      ['https://c.example', 10],
      ['https://f.example', 10],
      ['https://b.example', 40],
      ['https://d.example', 40],
      ['https://e.example', 40],
      ['https://a.example', 50],
    ]);
    await upstreams.onApplicationShutdown();
  });

  it('keeps a long list of equal priorities in the given order', async () => {
    const urls = Array.from(
      { length: 30 },
      (_, i) => `https://u${i}.example?priority=${i % 2 === 0 ? 7 : 3}`,
    );
    const upstreams = service({ 'cache-upstream-url': urls });
    const got = upstreams.upstreams.map((u) => u.url);
    const odd = urls.filter((_, i) => i % 2 === 1).map((u) => u.replace(/\?.*$/, ''));
    const even = urls.filter((_, i) => i % 2 === 0).map((u) => u.replace(/\?.*$/, ''));
    expect(got).toEqual([...odd, ...even]);
    await upstreams.onApplicationShutdown();
  });
});

describe('requests to upstreams (real local HTTP servers)', () => {
  let a: Server;
  let b: Server;
  let aUrl: string;
  let bUrl: string;
  const seen: { server: 'a' | 'b'; url?: string; headers: IncomingHttpHeaders }[] = [];

  const listen = async (name: 'a' | 'b'): Promise<[Server, string]> => {
    const server = createServer((req, res) => {
      seen.push({ server: name, url: req.url, headers: req.headers });
      if (req.url?.startsWith('/to-b/')) {
        res.writeHead(302, { location: `${bUrl}/landed${req.url.slice(5)}` }).end();
      } else if (req.url?.includes('.narinfo')) {
        res.writeHead(200, { 'content-length': 5 }).end('hello');
      } else if (req.url?.startsWith('/big')) {
        res.writeHead(200, { 'content-length': BIG_BYTES }).end(Buffer.alloc(BIG_BYTES, 'x'));
      } else if (req.url?.includes('/landed/')) {
        res.writeHead(200, { 'content-length': 3 }).end('nar');
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
    return [server, `http://127.0.0.1:${(server.address() as AddressInfo).port}`];
  };

  beforeAll(async () => {
    [a, aUrl] = await listen('a');
    [b, bUrl] = await listen('b');
  });

  afterAll(async () => {
    for (const s of [a, b]) {
      s.closeAllConnections();
      await new Promise((done) => s.close(done));
    }
  });

  it("sends an upstream's credentials and query string to that upstream only, also across a redirect", async () => {
    const withAuth = new URL(aUrl);
    withAuth.username = 'user';
    withAuth.password = 'hunter2';
    const upstreams = service({ 'cache-upstream-url': [`${withAuth.href}?token=t`, bUrl] });
    try {
      const [first, second] = upstreams.upstreams;
      expect(first.url).toBe(aUrl);
      expect(first.urlFor('x.narinfo')).toBe(`${aUrl}/x.narinfo?token=t`);
      expect(await upstreams.getText(first, 'x.narinfo')).toBe('hello');
      const basic = `Basic ${Buffer.from('user:hunter2').toString('base64')}`;
      expect(seen.at(-1)).toMatchObject({ server: 'a', url: '/x.narinfo?token=t' });
      expect(seen.at(-1)?.headers.authorization).toBe(basic);

      await upstreams.getText(second, 'y.narinfo');
      expect(seen.at(-1)).toMatchObject({ server: 'b', url: '/y.narinfo' });
      expect(seen.at(-1)?.headers.authorization).toBeUndefined();

      // A NAR on upstream a that redirects to b: the credentials stay behind.
      const { body, length } = await upstreams.open(first.resolveNarUrl('/to-b/n.nar'));
      expect(length).toBe(3);
      body.resume();
      expect(seen.at(-2)).toMatchObject({ server: 'a', url: '/to-b/n.nar?token=t' });
      expect(seen.at(-2)?.headers.authorization).toBe(basic);
      expect(seen.at(-1)).toMatchObject({ server: 'b', url: '/landed/n.nar?token=t' });
      expect(seen.at(-1)?.headers.authorization).toBeUndefined();
      expect(upstreams.labelOf(`${bUrl}/elsewhere`)).toBe(bUrl);
      expect(upstreams.labelOf('http://127.0.0.1:9/nar/x')).toBe('other');
    } finally {
      await upstreams.onApplicationShutdown();
    }
  });

  it('turns an answer other than 200 into UpstreamStatusError, without credentials in its message', async () => {
    const withAuth = new URL(aUrl);
    withAuth.username = 'user';
    withAuth.password = 'hunter2';
    const upstreams = service({ 'cache-upstream-url': withAuth.href });
    try {
      const err: unknown = await upstreams
        .getText(upstreams.upstreams[0], 'missing')
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UpstreamStatusError);
      expect((err as UpstreamStatusError).status).toBe(404);
      expect(String(err)).not.toMatch(/hunter2/);
      expect(upstreams.describeError(err)).toMatch(/404/);
    } finally {
      await upstreams.onApplicationShutdown();
    }
  });

  it('refuses a text document over 1 MiB, and opens a HEAD with its length and an empty body', async () => {
    const upstreams = service({ 'cache-upstream-url': aUrl });
    try {
      const [up] = upstreams.upstreams;
      await expect(upstreams.getText(up, 'big/doc')).rejects.toThrow(/larger than 1048576 bytes/);
      expect(seen.at(-1)).toMatchObject({ server: 'a', url: '/big/doc' });

      const head = await upstreams.open(up.urlFor('x.narinfo'), 'HEAD');
      expect(seen.at(-1)).toMatchObject({ server: 'a', url: '/x.narinfo' });
      expect(head.length).toBe(5);
      expect(head.body.readableEnded || head.body.destroyed).toBe(true);
    } finally {
      await upstreams.onApplicationShutdown();
    }
  });
});
