import { beforeAll, describe, expect, it } from 'vitest';
import { serializeNarInfo } from '../../src/nix/narinfo';
import { zstdBomb } from '../support/bombs';
import { FakeUpstream } from '../support/fake-upstream';
import { readOrNull } from '../support/files';
import { httpGet } from '../support/http-client';
import {
  objectPath,
  spoolsRemoved,
  storedSize,
  useNarwhal,
  waitStored,
} from '../support/narwhal-app';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, sign, withFile } from '../support/store-paths';

/**
 * Upstreams that try to hurt narwhal: dripping bodies, decompression bombs behind a signed narinfo,
 * and a narinfo that contradicts a NAR stored before it. Observed over a real socket.
 */

const key = makeKey('up-a-1');
const dripping = new FakeUpstream();
const honest = new FakeUpstream();
const nw = useNarwhal([dripping, honest], () => ({
  'cache-upstream-url': [`${dripping.url}?priority=10`, `${honest.url}?priority=20`],
  'cache-upstream-public-key': key.publicText,
  'cache-upstream-response-header-timeout': '2s',
  'cache-upstream-body-timeout': '1s',
  'cache-upstream-narinfo-timeout': '1s',
  'cache-upstream-min-rate': '4K',
}));
beforeAll(() => nw.listen());

describe('transfer deadlines', () => {
  it('gives up on a narinfo dripped a byte at a time and asks the next upstream', async () => {
    const f = await makeStorePath([key]);
    const text = Buffer.from(serializeNarInfo(f.narInfo));
    // 2 bytes every 300 ms: never a 1 s pause, but far too slow to finish within the 1 s deadline.
    dripping.set(`/${f.hash}.narinfo`, {
      kind: 'serve',
      body: text,
      contentType: 'text/x-nix-narinfo',
      chunkBytes: 2,
      chunkDelayMs: 300,
    });
    honest.publish(f);
    const res = await httpGet(`${nw.url}/${f.hash}.narinfo`, { keepBody: true });
    expect(res.status).toBe(200);
    expect(res.body.toString()).toContain(`StorePath: ${f.storePath}`);
    expect(honest.count('GET', `/${f.hash}.narinfo`)).toBe(1);
  });

  it('abandons a NAR whose upstream sends slower than --cache-upstream-min-rate', async () => {
    const f = await makeStorePath([key], { size: 200_000 });
    dripping.publish(f);
    // 512 bytes every 200 ms is 2.5 KiB/s: no pause reaches the 1 s body timeout.
    dripping.set(`/nar/${f.narName}`, {
      kind: 'serve',
      body: f.file,
      chunkBytes: 512,
      chunkDelayMs: 200,
    });
    expect((await httpGet(`${nw.url}/${f.hash}.narinfo`)).status).toBe(200);
    const res = await httpGet(`${nw.url}/nar/${f.narName}`);
    expect(res.status === 200 && res.complete).toBe(false);
    expect(res.bytes).toBeLessThan(f.file.length);
    await spoolsRemoved(nw);
    expect(storedSize(nw, f.narName)).toBeNull();
  });
});

describe('decompression bombs', () => {
  it('refuses a zstd NAR that decodes past its signed NarSize, stores nothing, and does not fetch it again at once', async () => {
    const f = await makeStorePath([key], { size: 1000 });
    const bomb = zstdBomb(2 * 1024 ** 3); // 2 GiB of 'a' in 64 KiB
    const bombed = withFile(f, bomb, 'zstd', [key], { narSize: 1024 * 1024 });
    const { narName, narInfo } = bombed;
    honest.publish(bombed);
    expect((await httpGet(`${nw.url}/${f.hash}.narinfo`)).status).toBe(200);

    const first = await httpGet(`${nw.url}/nar/${narName}`);
    expect(first.status === 200 && first.complete).toBe(false);
    await spoolsRemoved(nw);
    expect(storedSize(nw, narName)).toBeNull();
    expect(await readOrNull(objectPath(nw, narName))).toBeNull();

    const again = await httpGet(`${nw.url}/nar/${narName}`);
    expect(again.status).toBe(502);
    expect(honest.count('GET', `/${narInfo.url}`)).toBe(1);
  });
});

describe('a NAR stored by name before its narinfo', () => {
  it('is kept when the narinfo that arrives later matches it', async () => {
    const f = await makeStorePath([key], { size: 100_000 });
    honest.publish(f);
    const byName = await httpGet(`${nw.url}/nar/${f.narName}`, { keepBody: true });
    expect(byName.status).toBe(200);
    await waitStored(nw, f.narName, f.file);

    expect((await httpGet(`${nw.url}/${f.hash}.narinfo`)).status).toBe(200);
    expect(storedSize(nw, f.narName)).toBe(f.file.length);
    const hit = await httpGet(`${nw.url}/nar/${f.narName}`, { keepBody: true });
    expect(hit.headers['x-narwhal-source']).toBe('storage');
    expect(hit.body.equals(f.file)).toBe(true);
    expect(honest.count('GET', `/nar/${f.narName}`)).toBe(1);
  });

  it('is discarded when the narinfo that arrives later signs another NarSize, and never served as its NAR', async () => {
    const f = await makeStorePath([key], { size: 100_000 });
    // A genuinely signed narinfo whose NarSize/NarHash the NAR (right FileHash) does not decode to.
    const lying = { ...f.narInfo, narSize: f.narInfo.narSize + 4096 };
    sign(lying, [key]);
    honest.publish(f, lying);
    expect((await httpGet(`${nw.url}/nar/${f.narName}`)).status).toBe(200);
    await waitStored(nw, f.narName, f.file);

    expect((await httpGet(`${nw.url}/${f.hash}.narinfo`)).status).toBe(200);
    expect(storedSize(nw, f.narName)).toBeNull();
    expect(await readOrNull(objectPath(nw, f.narName))).toBeNull();
    const after = await httpGet(`${nw.url}/nar/${f.narName}`);
    expect(after.status === 200 && after.complete).toBe(false);
    await spoolsRemoved(nw);
    expect(storedSize(nw, f.narName)).toBeNull();
  });
});
