import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { NIX_TEST_KEY } from '../../src/nix/__fixtures__/vectors';
import { parseNarInfo, type NarInfo } from '../../src/nix/narinfo';
import { FakeUpstream } from '../support/fake-upstream';
import { httpGet } from '../support/http-client';
import { objectPath, storedSize, useNarwhal, waitStored } from '../support/narwhal-app';
import { readOrNull } from '../support/files';
import { sha256Nix32 } from '../support/hash';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, narOfFile, randomHashPart, sign, STORE_DIR } from '../support/store-paths';

/**
 * Upstreams that do things their own way — a zstd NAR as Nix writes it, bzip2, no FileHash,
 * `Compression: none`, opaque NAR URLs in the styles of Cachix and snix — each fetched, verified as
 * far as its narinfo allows, stored and served under narwhal's own `nar/<hash>` name.
 */

const FIXTURES = join(__dirname, '..', '..', 'src', 'nix', '__fixtures__');
const key = makeKey('up-odd-1');
const up = new FakeUpstream();
const nw = useNarwhal([up], () => ({
  'cache-upstream-url': [up.url],
  'cache-upstream-public-key': [key.publicText, NIX_TEST_KEY.public],
}));

beforeAll(() => nw.listen());

const get = (url: string) => nw.app.inject({ method: 'GET', url });

async function servedNarInfo(hash: string): Promise<NarInfo> {
  const res = await get(`/${hash}.narinfo`);
  expect(res.statusCode).toBe(200);
  return parseNarInfo(res.body, { storeDir: STORE_DIR });
}

describe('odd upstreams', () => {
  it("a zstd NAR as Nix writes it: verified, stored, served under narwhal's name, listed", async () => {
    const text = readFileSync(join(FIXTURES, 'narinfo', 'seq.zstd.narinfo'), 'utf8');
    const file = readFileSync(join(FIXTURES, 'nar', 'seq.nar.zst'));
    const hash = /StorePath: \/nix\/store\/(\w{32})-/.exec(text)![1];
    const upstreamUrl = /^URL: (.*)$/m.exec(text)![1];
    up.setNarInfo(hash, text);
    up.set(`/${upstreamUrl}`, { kind: 'serve', body: file });
    const served = await servedNarInfo(hash);
    expect(served.compression).toBe('zstd');
    expect(served.url).toBe(`nar/${sha256Nix32(file)}.nar.zst`);
    const nar = await get(`/${served.url}`);
    expect(nar.statusCode).toBe(200);
    expect(nar.rawPayload.equals(file)).toBe(true);
    await waitStored(nw, served.url.slice(4), file);
    const listing = await get(`/${hash}.ls`);
    expect(listing.statusCode).toBe(200);
    expect(JSON.parse(listing.body)).toEqual({
      version: 1,
      root: { type: 'regular', size: 48894, narOffset: 96 },
    });
  });

  it('a bzip2 NAR is checked against its FileHash; a corrupt one is never stored', async () => {
    const nar = narOfFile(randomBytes(20_000));
    const file = execFileSync('bzip2', ['-c'], { input: nar });
    const fileHash = sha256Nix32(file);
    const hash = randomHashPart();
    const narInfo: NarInfo = sign(
      {
        storePath: `${STORE_DIR}/${hash}-bzip2-test`,
        url: `nar/${fileHash}.nar.bz2`,
        compression: 'bzip2',
        fileHash: `sha256:${fileHash}`,
        fileSize: file.length,
        narHash: `sha256:${sha256Nix32(nar)}`,
        narSize: nar.length,
        references: [],
        sigs: [],
      },
      [key],
    );
    up.setNarInfo(hash, narInfo);
    up.set(`/${narInfo.url}`, { kind: 'serve', body: file });
    const served = await servedNarInfo(hash);
    expect(served).toMatchObject({ compression: 'bzip2', url: `nar/${fileHash}.nar.bz2` });
    const res = await get(`/${served.url}`);
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(file)).toBe(true);
    await waitStored(nw, `${fileHash}.nar.bz2`, file);
    // narwhal cannot decode bzip2, so it makes no listing of it.
    expect((await get(`/${hash}.ls`)).statusCode).toBe(404);

    const bad = randomHashPart();
    const badNar = narOfFile(randomBytes(20_000));
    const badFile = execFileSync('bzip2', ['-c'], { input: badNar });
    const badInfo = sign(
      {
        ...narInfo,
        storePath: `${STORE_DIR}/${bad}-bzip2-bad`,
        url: `nar/${sha256Nix32(badFile)}.nar.bz2`,
        fileHash: `sha256:${sha256Nix32(badFile)}`,
        fileSize: badFile.length,
        narHash: `sha256:${sha256Nix32(badNar)}`,
        narSize: badNar.length,
      },
      [key],
    );
    up.setNarInfo(bad, badInfo);
    up.set(`/${badInfo.url}`, { kind: 'serve', body: badFile });
    up.corrupt(badInfo.url);
    const badServed = await servedNarInfo(bad);
    const broken = await httpGet(`${nw.url}/${badServed.url}`);
    expect({ cleanOk: broken.status === 200 && broken.complete }).toEqual({ cleanOk: false });
    expect(await readOrNull(objectPath(nw, badServed.url.slice(4)))).toBeNull();
    expect(storedSize(nw, badServed.url.slice(4))).toBeNull();
    up.clearFaults();
  });

  it('an xz NAR without FileHash/FileSize is checked against NarHash; a corrupt one is never stored', async () => {
    const f = await makeStorePath([key], { withoutFileHash: true, size: 50_000 });
    up.publish(f);
    up.corrupt(f.narInfo.url);
    const served = await servedNarInfo(f.hash);
    expect(served.fileHash).toBeUndefined();
    const broken = await httpGet(`${nw.url}/${served.url}`);
    expect({ cleanOk: broken.status === 200 && broken.complete }).toEqual({ cleanOk: false });
    expect(storedSize(nw, served.url.slice(4))).toBeNull();
    up.clearFaults();
    const res = await get(`/${served.url}`);
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(f.file)).toBe(true);
  });

  it('Compression: none with FileHash: served as a plain NAR', async () => {
    const f = await makeStorePath([key], { compression: 'none' });
    up.publish(f);
    const served = await servedNarInfo(f.hash);
    expect(served).toMatchObject({ compression: 'none', url: `nar/${f.fileHash}.nar` });
    const res = await get(`/${served.url}`);
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(f.nar)).toBe(true);
  });

  it.each([
    ['Cachix-style', () => `nar/${randomBytes(16).toString('hex')}.nar.xz`],
    ['snix-style', () => `nar/snix-castore/${randomBytes(24).toString('base64url')}?narsize=123`],
    ['an absolute URL on the same upstream', () => `${up.url}/blobs/${randomHashPart()}`],
  ])('%s opaque NAR URL: fetched from there, served as nar/<FileHash>', async (_what, url) => {
    const f = await makeStorePath([key], { url: url() });
    up.setNarInfo(f.hash, f.narInfo);
    const path = new URL(f.narInfo.url, `${up.url}/`).pathname;
    up.set(path, { kind: 'serve', body: f.file });
    const served = await servedNarInfo(f.hash);
    expect(served.url).toBe(`nar/${f.narName}`);
    const res = await get(`/${served.url}`);
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(f.file)).toBe(true);
    expect(up.count('GET', path)).toBe(1);
  });
});
