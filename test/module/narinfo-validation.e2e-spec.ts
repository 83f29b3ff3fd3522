import { describe, expect, it } from 'vitest';
import { parseNarInfo, serializeNarInfo } from '../../src/nix/narinfo';
import { makeKey } from '../support/signing-keys';
import {
  makeStorePath,
  randomHashPart,
  sign,
  STORE_DIR,
  type StorePathFixture,
} from '../support/store-paths';
import { useTwoUpstreams } from '../support/two-upstreams';

/**
 * Which upstream narinfos narwhal takes: one that is not trusted, not intact, not well-formed or
 * not for the path asked for is a miss (and the next upstream is asked); harmless variations of
 * the format are accepted.
 */

const { keyA, keyB, untrusted, primary, secondary, inject } = useTwoUpstreams();

describe('narinfos from upstream: refused or accepted', () => {
  it.each<[string, (f: StorePathFixture) => Buffer]>([
    [
      'signed by an untrusted key',
      (f) => Buffer.from(serializeNarInfo(sign({ ...f.narInfo }, [untrusted]))),
    ],
    [
      'signed by a key named like a trusted one, with other bytes',
      (f) => Buffer.from(serializeNarInfo(sign({ ...f.narInfo }, [makeKey('up-a-1')]))),
    ],
    ['unsigned', (f) => Buffer.from(serializeNarInfo({ ...f.narInfo, sigs: [] }))],
    [
      'changed after signing (NarSize)',
      (f) => Buffer.from(serializeNarInfo({ ...f.narInfo, narSize: f.narInfo.narSize + 1 })),
    ],
    ['malformed', () => Buffer.from('this is not a narinfo\n')],
    [
      'for another store directory',
      (f) =>
        Buffer.from(
          serializeNarInfo({
            ...f.narInfo,
            storePath: f.storePath.replace('/nix/store/', '/gnu/store/'),
          }),
        ),
    ],
    [
      'larger than 1 MiB',
      (f) =>
        Buffer.from(serializeNarInfo(f.narInfo) + `X-Padding: ${'x'.repeat(2 * 1024 * 1024)}\n`),
    ],
  ])(
    'a narinfo %s is treated as a miss (404), and the next upstream is asked',
    async (_what, body) => {
      const f = await makeStorePath([keyA]);
      primary.setNarInfo(f.hash, body(f));
      const res = await inject('GET', `/${f.hash}.narinfo`);
      expect(res.statusCode).toBe(404);
      expect(secondary.count('GET', `/${f.hash}.narinfo`)).toBe(1);
      // The trusted copy on the next upstream is taken instead.
      const good = await makeStorePath([keyB]);
      primary.setNarInfo(good.hash, body(good));
      secondary.publish(good);
      const res2 = await inject('GET', `/${good.hash}.narinfo`);
      expect(res2.statusCode).toBe(200);
      const served = parseNarInfo(res2.body, { storeDir: STORE_DIR });
      expect(served.sigs).toContain(good.narInfo.sigs[0]);
      expect(served.narSize).toBe(good.narInfo.narSize);
    },
  );

  it('a narinfo describing another store path is ignored (404)', async () => {
    const other = await makeStorePath([keyA]);
    const hash = randomHashPart();
    primary.setNarInfo(hash, other.narInfo);
    const res = await inject('GET', `/${hash}.narinfo`);
    expect(res.statusCode).toBe(404);
    // …and it was not stored under the other path's hash either.
    expect(primary.count(undefined, `/${other.hash}.narinfo`)).toBe(0);
    primary.publish(other);
    const res2 = await inject('GET', `/${other.hash}.narinfo`);
    expect(res2.statusCode).toBe(200);
    expect(primary.count('GET', `/${other.hash}.narinfo`)).toBe(1);
  });

  it('unknown keys and CRLF line ends in an upstream narinfo are accepted', async () => {
    const f = await makeStorePath([keyA]);
    const text = `${serializeNarInfo(f.narInfo)}Provenance: {"type":"build"}\n`.replace(
      /\n/g,
      '\r\n',
    );
    primary.setNarInfo(f.hash, text);
    const res = await inject('GET', `/${f.hash}.narinfo`);
    expect(res.statusCode).toBe(200);
    expect(res.body).not.toContain('\r');
    expect(parseNarInfo(res.body, { storeDir: STORE_DIR }).narHash).toBe(f.narInfo.narHash);
  });
});
