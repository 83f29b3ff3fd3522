import { beforeAll, describe, expect, it } from 'vitest';
import { narInfoFingerprint } from '../../src/nix/fingerprint';
import { parseNarInfo } from '../../src/nix/narinfo';
import { parsePublicKey, verifyFingerprint } from '../../src/signing/keys';
import { FakeUpstream } from '../support/fake-upstream';
import { HOSTNAME, ownSigs, useNarwhal } from '../support/narwhal-app';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, STORE_DIR } from '../support/store-paths';
import { useTwoUpstreams } from '../support/two-upstreams';

/**
 * narwhal's own signature on the narinfos it serves (its key is named after --cache-hostname), and
 * serving the upstream signatures alone with --cache-sign-narinfo false.
 */

describe("narwhal's own Sig", () => {
  const { keyA, primary, inject } = useTwoUpstreams();
  let narwhalKey: string;

  beforeAll(async () => {
    narwhalKey = (await inject('GET', '/pubkey')).body.trim();
  });

  it("an upstream Sig under narwhal's own key name is replaced by narwhal's valid one", async () => {
    const f = await makeStorePath([keyA]);
    const stale = `${HOSTNAME}:${Buffer.alloc(64, 7).toString('base64')}`;
    primary.publish(f, { ...f.narInfo, sigs: [...f.narInfo.sigs, stale] });
    const served = parseNarInfo((await inject('GET', `/${f.hash}.narinfo`)).body, {
      storeDir: STORE_DIR,
    });
    expect(served.sigs).not.toContain(stale);
    const own = ownSigs(served);
    expect(own).toHaveLength(1);
    expect(
      verifyFingerprint(own[0], narInfoFingerprint(served, STORE_DIR), [
        parsePublicKey(narwhalKey),
      ]),
    ).toBe(true);
    expect(served.sigs).toContain(f.narInfo.sigs[0]);
  });
});

describe('--cache-sign-narinfo false', () => {
  const key = makeKey('up-1');
  const up = new FakeUpstream();
  const nw = useNarwhal([up], () => ({
    'cache-upstream-url': [up.url],
    'cache-upstream-public-key': [key.publicText],
    'cache-sign-narinfo': 'false',
  }));

  it('serves the narinfo with the upstream signatures only', async () => {
    const f = await makeStorePath([key]);
    up.publish(f);
    const res = await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` });
    expect(res.statusCode).toBe(200);
    const served = parseNarInfo(res.body, { storeDir: STORE_DIR });
    expect(served.sigs).toEqual(f.narInfo.sigs);
    expect(served.url).toBe(`nar/${f.narName}`);
  });
});
