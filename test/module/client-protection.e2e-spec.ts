import { setTimeout as sleep } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { sendfileCounters, sendfileSupport } from '../../src/nar/sendfile';
import { FakeUpstream } from '../support/fake-upstream';
import { httpGet, stalledGet } from '../support/http-client';
import { useNarwhal, waitStored } from '../support/narwhal-app';
import { makeKey } from '../support/signing-keys';
import { makeStorePath } from '../support/store-paths';
import { eventually } from '../support/wait';

/**
 * What a client cannot do to narwhal: hold memory by not reading, or learn what other clients are
 * downloading through the endpoint meant for other narwhal instances.
 */

const key = makeKey('up-a-1');
const upstream = new FakeUpstream();
const nw = useNarwhal([upstream], () => ({
  'cache-upstream-url': upstream.url,
  'cache-upstream-public-key': key.publicText,
  'cache-client-stall-timeout': '1s',
  'prometheus-enabled': 'true',
}));
beforeAll(() => nw.listen());

async function droppedStalled(): Promise<number> {
  const text = (await nw.app.inject({ method: 'GET', url: '/metrics' })).payload;
  const m = /^narwhal_clients_dropped_total\{reason="stalled"\} (\d+)$/m.exec(text);
  return Number(m?.[1]);
}

describe('a client that stops reading', () => {
  it('is disconnected after --cache-client-stall-timeout, while one reading along is not', async () => {
    const f = await makeStorePath([key], { size: 16 * 1024 * 1024, compression: 'none' });
    upstream.publish(f);
    expect((await httpGet(`${nw.url}/${f.hash}.narinfo`)).status).toBe(200);
    expect((await httpGet(`${nw.url}/nar/${f.narName}`)).status).toBe(200);
    await waitStored(nw, f.narName, f.file, 30_000);
    const before = await droppedStalled();
    const transfers = sendfileCounters.transfers;

    const stalled = stalledGet(nw.port, `/nar/${f.narName}`);
    await eventually(async () => (await droppedStalled()) === before + 1, 20_000, 'dropped');
    // A stored NAR this size is sent with sendfile where the helper is built (always in CI): the
    // transfer notices the stall itself, and it is counted the same way.
    if (sendfileSupport.available) expect(sendfileCounters.transfers).toBe(transfers + 1);
    // Only now does the paused client read again: it sees the connection end early.
    stalled.socket.resume();
    await stalled.closed;
    expect(stalled.received()).toBeLessThan(f.file.length);

    const reading = await httpGet(`${nw.url}/nar/${f.narName}`);
    expect(reading.status).toBe(200);
    expect(reading.complete).toBe(true);
    expect(await droppedStalled()).toBe(before + 1);
  });
});

describe('the peer endpoint on a single instance', () => {
  it('is a 404 for everyone, also while the NAR is downloading', async () => {
    const f = await makeStorePath([key], { size: 2 * 1024 * 1024 });
    upstream.publish(f);
    upstream.set(`/nar/${f.narName}`, { kind: 'serve', body: f.file, chunkDelayMs: 100 });
    expect((await httpGet(`${nw.url}/${f.hash}.narinfo`)).status).toBe(200);
    const client = httpGet(`${nw.url}/nar/${f.narName}`);
    await eventually(
      () => Promise.resolve(upstream.count('GET', `/nar/${f.narName}`) === 1),
      5000,
      'the download started',
    );
    await sleep(200);
    for (const headers of [{}, { authorization: 'Bearer guess' }]) {
      const peer = await httpGet(`${nw.url}/_narwhal/downloads/${f.narName}`, { headers });
      expect(peer.status).toBe(404);
    }
    expect((await client).status).toBe(200);
  });
});
