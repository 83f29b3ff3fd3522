import { describe, expect, it } from 'vitest';
import { parseNarInfo } from '../../src/nix/narinfo';
import { sha256Nix32 } from '../support/hash';
import { makeStorePath, randomHashPart, STORE_DIR } from '../support/store-paths';
import { useTwoUpstreams } from '../support/two-upstreams';

/**
 * Where the NAR bytes come from: whatever URL the upstream narinfo gives (another path, a query
 * string, another host, a legacy nix-serve name) and redirects from it, while narwhal serves the
 * NAR under its own `nar/<hash>` name.
 */

const { keyA, primary, secondary, inject } = useTwoUpstreams();

describe("the upstream's NAR URL", () => {
  it('an opaque upstream URL (other path, query string) is followed for the bytes', async () => {
    const f = await makeStorePath([keyA], { url: 'download/0b9c1f58-opaque?token=abc' });
    primary.publish(f);
    const info = parseNarInfo((await inject('GET', `/${f.hash}.narinfo`)).body, {
      storeDir: STORE_DIR,
    });
    expect(info.url).toBe(`nar/${f.narName}`);
    const res = await inject('GET', `/${info.url}`);
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(f.file)).toBe(true);
    expect(
      primary.requests.filter((r) => r.url === '/download/0b9c1f58-opaque?token=abc'),
    ).toHaveLength(1);
  });

  it('an absolute upstream URL on another host is followed for the bytes', async () => {
    const f = await makeStorePath([keyA], {
      url: `${secondary.url}/blobs/abs-${randomHashPart()}.nar.xz`,
    });
    primary.setNarInfo(f.hash, f.narInfo);
    const blobPath = new URL(f.narInfo.url).pathname;
    secondary.set(blobPath, { kind: 'serve', body: f.file });
    const info = parseNarInfo((await inject('GET', `/${f.hash}.narinfo`)).body, {
      storeDir: STORE_DIR,
    });
    expect(info.url).toBe(`nar/${f.narName}`);
    const res = await inject('GET', `/${info.url}`);
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(f.file)).toBe(true);
    expect(secondary.count('GET', blobPath)).toBe(1);
  });

  it('a legacy nix-serve narinfo (Compression: none, no FileHash, URL nar/<hash>-<narhash>.nar) works', async () => {
    const f = await makeStorePath([keyA], {
      compression: 'none',
      withoutFileHash: true,
      url: `nar/${randomHashPart()}-${sha256Nix32(Buffer.from('x'))}.nar`,
    });
    primary.publish(f);
    const served = parseNarInfo((await inject('GET', `/${f.hash}.narinfo`)).body, {
      storeDir: STORE_DIR,
    });
    expect(served.compression).toBe('none');
    expect(served.url).toBe(`nar/${f.narInfo.narHash.slice('sha256:'.length)}.nar`);
    const res = await inject('GET', `/${served.url}`);
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(f.nar)).toBe(true);
    expect(primary.count('GET', `/${f.narInfo.url}`)).toBe(1);
  });

  it('an upstream redirect for the NAR bytes (e.g. to a CDN) is followed', async () => {
    const f = await makeStorePath([keyA]);
    primary.publish(f);
    primary.set(`/nar/${f.narName}`, { kind: 'redirect', location: `/cdn/${f.narName}` });
    primary.set(`/cdn/${f.narName}`, { kind: 'serve', body: f.file });
    expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
    const res = await inject('GET', `/nar/${f.narName}`);
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(f.file)).toBe(true);
    expect(primary.count('GET', `/cdn/${f.narName}`)).toBe(1);
  });
});
