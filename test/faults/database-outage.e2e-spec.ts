import { performance } from 'node:perf_hooks';
import { afterAll, afterEach, beforeAll, beforeEach, expect, it } from 'vitest';
import { forEachDialect, type FreshDatabase } from '../database/database-servers';
import { FakeUpstream } from '../support/fake-upstream';
import { printFigures, scaled } from '../support/figures';
import { httpGet } from '../support/http-client';
import { Narwhal } from '../support/narwhal-app';
import { makeKey } from '../support/signing-keys';
import { makeStorePath } from '../support/store-paths';
import { TcpProxy } from '../support/tcp-proxy';
import { eventually } from '../support/wait';

/**
 * The database goes away (stopped, restarted, network gone) while narwhal serves, and comes back.
 * A TCP proxy in front of the machine's PostgreSQL/MariaDB stands in for the server stopping, so the
 * shared server keeps running for the other suites. What can be served without the database is:
 * NARs in storage by their name, narinfos held in memory; the rest is 503 with Retry-After (Nix
 * backs off and retries), and the outage is logged once, not per request.
 */

/** How long clients keep asking while the database is down. */
const OUTAGE_MS = scaled(3_000, 30_000);

const key = makeKey('up-a-1');
const upstream = new FakeUpstream();

beforeAll(() => upstream.listen());
afterAll(() => upstream.close());

forEachDialect(['postgres', 'mariadb'], (dialect, server) => {
  let db: FreshDatabase;
  let proxy: TcpProxy;
  let nw: Narwhal;

  beforeEach(async () => {
    db = await server().createDatabase();
    const url = new URL(db.config.kind === 'sqlite' ? '' : db.config.url);
    proxy = new TcpProxy(url.hostname, Number(url.port));
    await proxy.up();
    url.port = String(proxy.port);
    nw = new Narwhal(
      () => ({
        'cache-database-url': url.toString(),
        'cache-upstream-url': upstream.url,
        'cache-upstream-public-key': key.publicText,
      }),
      { captureLogs: true },
    );
    await nw.start();
    await nw.listen();
  });

  afterEach(async () => {
    await proxy.up(); // so that narwhal's shutdown and the database drop find it
    await nw?.close();
    await proxy.down();
    await db?.drop();
  });

  it('serves stored NARs and remembered narinfos without it, 503 for the rest, and recovers', async () => {
    const known = await makeStorePath([key], { size: 50_000 });
    const later = await makeStorePath([key], { size: 50_000 });
    upstream.publish(known);
    upstream.publish(later);
    expect((await httpGet(`${nw.url}/${known.hash}.narinfo`)).status).toBe(200);
    expect((await httpGet(`${nw.url}/nar/${known.narName}`)).status).toBe(200);
    await eventually(
      async () =>
        (await httpGet(`${nw.url}/nar/${known.narName}`)).headers['x-narwhal-source'] === 'storage',
      10_000,
      'the NAR is stored',
    );

    await proxy.down();
    const downAt = performance.now();
    // Every answer during the outage, by status.
    const during: Record<number, number> = {};
    const get = async (path: string, keepBody = false) => {
      const res = await httpGet(`${nw.url}${path}`, { keepBody });
      during[res.status] = (during[res.status] ?? 0) + 1;
      return res;
    };
    const nar = await get(`/nar/${known.narName}`, true);
    expect(nar.status).toBe(200);
    expect(nar.complete).toBe(true);
    expect(nar.body.equals(known.file)).toBe(true);
    const narInfo = await get(`/${known.hash}.narinfo`, true);
    expect(narInfo.status).toBe(200);
    expect(narInfo.body.toString()).toContain(`StorePath: ${known.storePath}`);

    for (let i = 0; i < 5; i++) {
      const miss = await get(`/${later.hash}.narinfo`);
      expect(miss.status).toBe(503);
      expect(miss.headers['retry-after']).toMatch(/^\d+$/);
      const unknownNar = await get(`/nar/${later.narName}`);
      expect(unknownNar.status).toBe(503);
    }
    // Then clients keep coming for a while: each kind always gets the same answer.
    const kinds = {
      'stored NAR': [`/nar/${known.narName}`, 200],
      'remembered narinfo': [`/${known.hash}.narinfo`, 200],
      'narinfo miss': [`/${later.hash}.narinfo`, 503],
      'NAR not stored': [`/nar/${later.narName}`, 503],
    } as const;
    const byKind: Record<string, Record<number, number>> = {};
    const until = performance.now() + OUTAGE_MS;
    await Promise.all(
      Object.entries(kinds).map(async ([kind, [path]]) => {
        const tally: Record<number, number> = (byKind[kind] = {});
        while (performance.now() < until) {
          const status = (await get(path)).status;
          tally[status] = (tally[status] ?? 0) + 1;
        }
      }),
    );
    for (const [kind, [, status]] of Object.entries(kinds)) {
      expect({ kind, statuses: Object.keys(byKind[kind]) }).toEqual({
        kind,
        statuses: [String(status)],
      });
    }
    const outageLines = () =>
      nw.lines.filter((l) => String(l.msg).includes('the database is unreachable')).length;
    expect(outageLines()).toBe(1);
    expect(nw.lines.filter((l) => l.level === 50 && !String(l.msg).includes('database'))).toEqual(
      [],
    );

    const outageMs = performance.now() - downAt;
    await proxy.up();
    const upAt = performance.now();
    await eventually(
      async () => (await httpGet(`${nw.url}/${later.hash}.narinfo`)).status === 200,
      20_000,
      'narinfo lookups work again',
    );
    printFigures(`database down and back (${dialect})`, {
      'outage s': (outageMs / 1000).toFixed(1),
      'answers during it': JSON.stringify(during),
      'by kind': JSON.stringify(byKind),
      'ms from the database back to the first narinfo miss served': Math.round(
        performance.now() - upAt,
      ),
      'outage log lines': outageLines(),
    });
    expect((await httpGet(`${nw.url}/nar/${later.narName}`)).status).toBe(200);
    await eventually(
      () =>
        Promise.resolve(
          nw.lines.some((l) => String(l.msg).includes('the database is reachable again')),
        ),
      10_000,
      'recovery logged',
    );
    expect(outageLines()).toBe(1);
  });
});
