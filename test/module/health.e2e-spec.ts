import { DataSource } from 'typeorm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { UpstreamReachability } from '../../src/upstream/upstream-probe';
import { FakeUpstream } from '../support/fake-upstream';
import { startNarwhal, type Narwhal } from '../support/narwhal-app';
import { closedPortUrl } from '../support/ports';
import { makeKey, type TestKey } from '../support/signing-keys';
import { makeStorePath } from '../support/store-paths';
import { eventually } from '../support/wait';

/**
 * /healthz and /readyz (GET and HEAD), upstream reachability in /readyz, request ids, and what the
 * logs say about a request — through Fastify inject against real local upstreams.
 */

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const PASSWORD = 'pr0be-s3cret';

interface ReadyBody {
  status: string;
  details: Record<string, { status: string; upstreams?: UpstreamReachability[] }>;
}

async function readyz(nw: Narwhal): Promise<{ status: number; body: ReadyBody }> {
  const res = await nw.app.inject({ method: 'GET', url: '/readyz' });
  return { status: res.statusCode, body: res.json<ReadyBody>() };
}

/** Waits until the background probe has checked every upstream once; returns /readyz then. */
async function probed(nw: Narwhal): Promise<{ status: number; body: ReadyBody }> {
  let last = await readyz(nw);
  await eventually(
    async () => {
      last = await readyz(nw);
      return (last.body.details.upstream?.upstreams ?? []).every((u) => u.checkedAt !== null);
    },
    10_000,
    'a first probe of every upstream',
  );
  return last;
}

describe('/readyz upstream details and the health endpoints', () => {
  let key: TestKey;
  let good: FakeUpstream;
  let goodWithCredentials: string;
  let closed: string;
  let nw: Narwhal;

  beforeAll(async () => {
    key = makeKey('up-health-1');
    good = await FakeUpstream.start();
    good.set('/nix-cache-info', {
      kind: 'serve',
      body: Buffer.from('StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n'),
      contentType: 'text/x-nix-cache-info',
    });
    const u = new URL(good.url);
    u.username = 'probe';
    u.password = PASSWORD;
    goodWithCredentials = `${u.href.replace(/\/$/, '')}?priority=10`;
    closed = `${await closedPortUrl()}?priority=20`;
    nw = await startNarwhal(
      {
        'cache-upstream-url': [goodWithCredentials, closed],
        'cache-upstream-public-key': [key.publicText],
        'cache-upstream-dialer-timeout': '1s',
        'log-level': 'debug',
      },
      { captureLogs: true },
    );
  });

  afterAll(async () => {
    await nw?.close();
    await good?.close();
  });

  it('reports each upstream (reachable or not, with latency) and stays ready; no credentials', async () => {
    const { status, body } = await probed(nw);
    expect(status).toBe(200);
    expect(body.status).toBe('ok');
    expect(body.details.upstream.status).toBe('up');
    const [up, down] = body.details.upstream.upstreams!;
    expect(up).toMatchObject({
      url: good.url,
      reachable: true,
      checkedAt: expect.any(String) as unknown,
    });
    expect(up.latencyMs).toBeGreaterThanOrEqual(0);
    expect(up.error).toBeUndefined();
    expect(down).toMatchObject({
      url: closed.split('?')[0],
      reachable: false,
      error: 'ECONNREFUSED',
    });
    expect(JSON.stringify(body)).not.toContain(PASSWORD);
    // The probe is an ordinary upstream request: with the upstream's credentials, off the request path.
    expect(good.probes.length).toBeGreaterThanOrEqual(1);
    expect(good.probes[0].authorization).toBe(
      `Basic ${Buffer.from(`probe:${PASSWORD}`).toString('base64')}`,
    );
    expect(good.requests).toEqual([]);
  });

  it('answers HEAD /healthz and HEAD /readyz with 200 and no body', async () => {
    for (const url of ['/healthz', '/readyz']) {
      const res = await nw.app.inject({ method: 'HEAD', url });
      expect(res.statusCode, url).toBe(200);
      expect(res.body, url).toBe('');
      expect(res.headers['content-type'], url).toMatch(/^application\/json/);
    }
  });

  it('gives every response an x-request-id: a new UUID, or the caller’s own when it is sane', async () => {
    const fresh = await nw.app.inject({ method: 'GET', url: '/healthz' });
    expect(fresh.headers['x-request-id']).toMatch(UUID);
    const other = await nw.app.inject({ method: 'GET', url: '/healthz' });
    expect(other.headers['x-request-id']).not.toBe(fresh.headers['x-request-id']);

    const given = await nw.app.inject({
      method: 'GET',
      url: '/pubkey',
      headers: { 'x-request-id': 'lb-7f3a:42' },
    });
    expect(given.headers['x-request-id']).toBe('lb-7f3a:42');

    for (const junk of ['a b', 'x'.repeat(200), '"quoted"']) {
      const res = await nw.app.inject({
        method: 'GET',
        url: '/pubkey',
        headers: { 'x-request-id': junk },
      });
      expect(res.headers['x-request-id'], junk).toMatch(UUID);
    }
    // Errors and 404s carry one too.
    const missing = await nw.app.inject({ method: 'GET', url: '/no-such-thing' });
    expect(missing.statusCode).toBe(404);
    expect(missing.headers['x-request-id']).toMatch(UUID);
  });

  it('a service’s log line during a request carries the request id; secrets are never logged', async () => {
    const f = await makeStorePath([key]);
    good.publish(f);
    const res = await nw.app.inject({
      method: 'GET',
      url: `/${f.hash}.narinfo`,
      headers: {
        'x-request-id': 'trace-narinfo-1',
        authorization: 'Bearer client-token-xyz',
        cookie: 'session=client-cookie-xyz',
      },
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-request-id']).toBe('trace-narinfo-1');

    const cached = nw.lines.find(
      (l) => typeof l.msg === 'string' && l.msg.startsWith(`cached ${f.hash}.narinfo`),
    );
    expect(cached).toMatchObject({ level: 'info', context: 'narinfo', reqId: 'trace-narinfo-1' });
    expect(cached!.msg).toContain(good.url);
    const access = nw.lines.find(
      (l) => l.msg === 'request completed' && l.url === `/${f.hash}.narinfo`,
    );
    expect(access).toMatchObject({
      level: 'info',
      reqId: 'trace-narinfo-1',
      method: 'GET',
      statusCode: 200,
      responseTime: expect.any(Number) as unknown,
    });
    // Probes are debug lines; other lines outside a request have no reqId.
    const probeAccess = nw.lines.find((l) => l.msg === 'request completed' && l.url === '/readyz');
    expect(probeAccess?.level).toBe('debug');
    const startup = nw.lines.find((l) => l.context === 'signing');
    expect(startup).toBeDefined();
    expect(startup!.reqId).toBeUndefined();

    const all = JSON.stringify(nw.lines);
    expect(all).not.toContain(PASSWORD);
    expect(all).not.toContain('client-token-xyz');
    expect(all).not.toContain('client-cookie-xyz');
  });

  it('logs Nest’s own start-up chatter at debug, not info', () => {
    const mapped = nw.lines.filter((l) => l.context === 'RouterExplorer');
    expect(mapped.length).toBeGreaterThan(0);
    for (const l of mapped) expect(l.level).toBe('debug');
  });
});

describe('/readyz when every upstream is down, and when the database is gone', () => {
  let nw: Narwhal;

  beforeAll(async () => {
    nw = await startNarwhal(
      {
        'cache-upstream-url': [await closedPortUrl(), await closedPortUrl()],
        'cache-upstream-public-key': [makeKey('up-down-1').publicText],
        'log-level': 'error',
      },
      { captureLogs: true },
    );
  });

  afterAll(async () => {
    await nw?.close();
  });

  it('stays ready (200) with every upstream unreachable, and says so', async () => {
    const { status, body } = await probed(nw);
    expect(status).toBe(200);
    expect(body.details.upstream.status).toBe('up');
    expect(body.details.upstream.upstreams!.map((u) => u.reachable)).toEqual([false, false]);
  });

  it('answers 503 with the Terminus JSON when a check fails, for GET and HEAD', async () => {
    await nw.app.get(DataSource).destroy();
    const { status, body } = await readyz(nw);
    expect(status).toBe(503);
    expect(body.status).toBe('error');
    expect(body.details.database.status).toBe('down');
    expect(body.details.storage.status).toBe('up');
    expect(body.details.upstream.status).toBe('up');
    const head = await nw.app.inject({ method: 'HEAD', url: '/readyz' });
    expect(head.statusCode).toBe(503);
    expect(head.body).toBe('');
    // Liveness does not depend on the database.
    expect((await nw.app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);
  });
});
