import { createHash } from 'node:crypto';
import { brotliCompressSync, gzipSync } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { encodeNix32 } from '../../src/nix/base32';
import { parseNarInfo, serializeNarInfo, type NarInfo } from '../../src/nix/narinfo';
import { FakeUpstream } from '../support/fake-upstream';
import { snapshot } from '../support/files';
import {
  dbCounts,
  objectPath,
  ownSigs,
  spoolsRemoved,
  storedSize,
  useNarwhal,
  type Narwhal,
} from '../support/narwhal-app';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, randomHashPart, sign, type StorePathFixture } from '../support/store-paths';
import { basic, bearer, forgetTokens, makeToken, revokeToken } from '../support/tokens';
import { readOrNull } from '../support/files';
import { verifyFingerprint, parsePublicKey } from '../../src/signing/keys';
import { narInfoFingerprint } from '../../src/nix/fingerprint';

/**
 * Uploads as `nix copy --to` sends them, through Fastify inject: every byte verified before it is
 * kept, every refusal before anything is stored or asked of an upstream. (The real Nix client
 * uploads in test/nix-upload.e2e-spec.ts.)
 */

const upstreamKey = makeKey('up-1');
const ciKey = makeKey('ci-1');

type Headers = Record<string, string>;

function request(
  nw: Narwhal,
  method: 'PUT' | 'DELETE' | 'GET' | 'HEAD',
  url: string,
  body?: Buffer | string,
  headers: Headers = {},
) {
  return nw.app.inject({ method, url, headers, payload: body });
}

/** The narinfo of `f` as Nix uploads it. */
function narInfoText(f: StorePathFixture, changes: Partial<NarInfo> = {}): string {
  return serializeNarInfo({ ...f.narInfo, ...changes });
}

/** Uploads `f`'s NAR and narinfo with `auth`; both must be stored. */
async function upload(nw: Narwhal, f: StorePathFixture, auth: Headers): Promise<void> {
  const nar = await request(nw, 'PUT', `/nar/${f.narName}`, f.file, {
    ...auth,
    'content-type': 'application/x-nix-nar',
  });
  expect(nar.statusCode, nar.body).toBe(200);
  const info = await request(nw, 'PUT', `/${f.hash}.narinfo`, narInfoText(f), {
    ...auth,
    'content-type': 'text/x-nix-narinfo',
  });
  expect(info.statusCode, info.body).toBe(200);
}

/** What must not change when an upload is refused. */
async function state(nw: Narwhal, upstream: FakeUpstream) {
  return {
    files: await snapshot(nw.storeRoot),
    db: dbCounts(nw),
    upstreamRequests: upstream.requests.length,
  };
}

describe('uploads with --cache-allow-put-verb and --cache-allow-delete-verb', () => {
  const upstream = new FakeUpstream();
  const nw = useNarwhal([upstream], () => ({
    'cache-upstream-url': [upstream.url],
    'cache-upstream-public-key': [upstreamKey.publicText],
    'cache-allow-put-verb': 'true',
    'cache-allow-delete-verb': 'true',
    'cache-token-recheck-interval': '200ms',
  }));
  const auth: Record<string, Headers> = {};

  beforeAll(async () => {
    auth.writer = basic(await makeToken(nw, 'ci', ['write']));
    auth.reader = basic(await makeToken(nw, 'reader', ['read']));
    auth.deleter = bearer(await makeToken(nw, 'janitor', ['delete']));
  });

  it('stores a verified NAR and narinfo and serves them signed by narwhal', async () => {
    const f = await makeStorePath([], { name: 'uploaded' });
    await upload(nw, f, auth.writer);
    expect(storedSize(nw, f.narName)).toBe(f.file.length);
    expect(await readOrNull(objectPath(nw, f.narName))).toEqual(f.file);

    const res = await request(nw, 'GET', `/${f.hash}.narinfo`);
    expect(res.statusCode).toBe(200);
    const served = parseNarInfo(res.body, { storeDir: '/nix/store' });
    expect(served).toMatchObject({
      storePath: f.storePath,
      url: `nar/${f.narName}`,
      narHash: f.narInfo.narHash,
      fileHash: f.narInfo.fileHash,
    });
    const own = ownSigs(served);
    expect(own).toHaveLength(1);
    const pub = parsePublicKey((await request(nw, 'GET', '/pubkey')).body.trim());
    expect(verifyFingerprint(own[0], narInfoFingerprint(served, '/nix/store'), [pub])).toBe(true);
    const nar = await request(nw, 'GET', `/nar/${f.narName}`);
    expect(nar.statusCode).toBe(200);
    expect(nar.rawPayload.equals(f.file)).toBe(true);
    // Nothing of this came from, or was asked of, an upstream.
    expect(upstream.requests).toEqual([]);
  });

  it('answers the same upload again with 200 and changes nothing; a different narinfo is 409', async () => {
    const f = await makeStorePath([], { name: 'again' });
    await upload(nw, f, auth.writer);
    const before = await state(nw, upstream);
    const again = await request(nw, 'PUT', `/${f.hash}.narinfo`, narInfoText(f), auth.writer);
    expect([again.statusCode, again.body]).toEqual([200, 'already here\n']);
    const nar = await request(nw, 'PUT', `/nar/${f.narName}`, f.file, auth.writer);
    expect([nar.statusCode, nar.body]).toEqual([200, 'already here\n']);
    const other = narInfoText(f, { references: [`${randomHashPart()}-other`] });
    const conflict = await request(nw, 'PUT', `/${f.hash}.narinfo`, other, auth.writer);
    expect(conflict.statusCode).toBe(409);
    expect(conflict.body).toContain('delete it first');
    expect(await state(nw, upstream)).toEqual(before);
    const served = await request(nw, 'GET', `/${f.hash}.narinfo`);
    expect(served.body).not.toContain('-other');
  });

  it('never replaces a narinfo an upstream supplied', async () => {
    const f = await makeStorePath([upstreamKey], { name: 'from-upstream' });
    upstream.publish(f);
    expect((await request(nw, 'GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
    const mine = await makeStorePath([], { name: 'from-upstream' });
    const nar = await request(nw, 'PUT', `/nar/${mine.narName}`, mine.file, auth.writer);
    expect(nar.statusCode).toBe(200);
    const text = narInfoText(mine, { storePath: f.storePath });
    const res = await request(nw, 'PUT', `/${f.hash}.narinfo`, text, auth.writer);
    expect(res.statusCode).toBe(409);
    const served = await request(nw, 'GET', `/${f.hash}.narinfo`);
    expect(served.body).toContain(`URL: nar/${f.narName}`);
  });

  it('accepts a narinfo for a NAR an upstream vouched for, that Nix skipped uploading after HEAD', async () => {
    const f = await makeStorePath([upstreamKey], { name: 'same-bytes' });
    upstream.publish(f);
    expect((await request(nw, 'GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
    // Another store path whose NAR has the same bytes: Nix asks HEAD, hears 200 and skips the PUT.
    const hash = randomHashPart();
    const twin = { ...f.narInfo, storePath: `/nix/store/${hash}-same-bytes`, sigs: [] };
    expect((await request(nw, 'HEAD', `/nar/${f.narName}`)).statusCode).toBe(200);
    const wrong = serializeNarInfo({ ...twin, narSize: twin.narSize + 8 });
    expect((await request(nw, 'PUT', `/${hash}.narinfo`, wrong, auth.writer)).statusCode).toBe(400);
    const res = await request(nw, 'PUT', `/${hash}.narinfo`, serializeNarInfo(twin), auth.writer);
    expect(res.statusCode, res.body).toBe(200);
    // Its NAR is fetched (and verified) on the first request, as for the upstream's own path.
    const nar = await request(nw, 'GET', `/nar/${f.narName}`);
    expect(nar.statusCode).toBe(200);
    expect(nar.rawPayload.equals(f.file)).toBe(true);
  });

  describe('refused for want of a token: 401 or 403, nothing stored, no upstream request', () => {
    const cases: [string, () => Promise<Headers>, number][] = [
      ['no token', () => Promise.resolve({}), 401],
      ['an unknown token', () => Promise.resolve(basic(`nw_${'A'.repeat(43)}`)), 401],
      ['a malformed header', () => Promise.resolve({ authorization: 'Basic bm9jb2xvbg==' }), 401],
      ['a token of another shape', () => Promise.resolve(bearer('hunter2')), 401],
      ['a read-only token', () => Promise.resolve(auth.reader), 403],
      ['a delete-only token', () => Promise.resolve(auth.deleter), 403],
      [
        'an expired token',
        async () => basic(await makeToken(nw, `old-${Date.now()}`, ['write'], 1)),
        401,
      ],
    ];
    it.each(cases)('%s', async (_what, headersOf, status) => {
      const headers = await headersOf();
      const f = await makeStorePath([upstreamKey], { name: 'refused' });
      upstream.publish(f); // an upstream has it: a refused request must not ask
      const before = await state(nw, upstream);
      for (const [url, body] of [
        [`/nar/${f.narName}`, f.file],
        [`/${f.hash}.narinfo`, narInfoText(f)],
        [`/${f.hash}.ls`, '{"version":1,"root":{"type":"regular","size":1,"narOffset":96}}'],
        [`/log/${randomHashPart()}-x.drv`, 'a log'],
      ] as const) {
        const res = await request(nw, 'PUT', url, body, headers);
        expect({ url, status: res.statusCode }).toEqual({ url, status });
        if (status === 401) expect(res.headers['www-authenticate']).toBe('Basic realm="narwhal"');
      }
      const del = await request(nw, 'DELETE', `/${f.hash}.narinfo`, undefined, headers);
      expect(del.statusCode).toBe(headers === auth.deleter ? 404 : status);
      expect(await state(nw, upstream)).toEqual(before);
    });

    it('a revoked token, within --cache-token-recheck-interval', async () => {
      const token = await makeToken(nw, 'short-lived', ['write']);
      const f = await makeStorePath([]);
      const first = await request(nw, 'PUT', `/nar/${f.narName}`, f.file, basic(token));
      expect(first.statusCode).toBe(200);
      await revokeToken(nw, 'short-lived');
      await new Promise((r) => setTimeout(r, 300)); // past the 200 ms recheck interval
      const before = await state(nw, upstream);
      const res = await request(nw, 'PUT', `/${f.hash}.narinfo`, narInfoText(f), basic(token));
      expect(res.statusCode).toBe(401);
      expect(await state(nw, upstream)).toEqual(before);
    });
  });

  describe('tampered uploads are refused and change nothing', () => {
    it('NAR bytes that do not hash to the FileHash in their name: 400, nothing kept', async () => {
      const f = await makeStorePath([]);
      const other = await makeStorePath([]);
      const before = await state(nw, upstream);
      const res = await request(nw, 'PUT', `/nar/${f.narName}`, other.file, auth.writer);
      expect(res.statusCode).toBe(400);
      expect(res.body).toMatch(/hashes to|FileHash/);
      await spoolsRemoved(nw);
      expect(await state(nw, upstream)).toEqual(before);
      expect(storedSize(nw, f.narName)).toBeNull();
    });

    it('a NAR cut short (fewer bytes than its Content-Length): nothing kept', async () => {
      const f = await makeStorePath([]);
      const before = await state(nw, upstream);
      const res = await request(nw, 'PUT', `/nar/${f.narName}`, f.file.subarray(0, 100), {
        ...auth.writer,
        'content-length': String(100),
      });
      expect(res.statusCode).toBe(400);
      await spoolsRemoved(nw);
      expect(await state(nw, upstream)).toEqual(before);
    });

    it('narinfos that do not match their NAR, their name, or are not complete: 400', async () => {
      const f = await makeStorePath([], { name: 'tamper' });
      const nar = await request(nw, 'PUT', `/nar/${f.narName}`, f.file, auth.writer);
      expect(nar.statusCode).toBe(200);
      const before = await state(nw, upstream);
      const wrongHash = `sha256:${encodeNix32(createHash('sha256').update('x').digest())}`;
      const missingNar = await makeStorePath([]);
      const bad: [string, string, string][] = [
        ['NarHash', narInfoText(f, { narHash: wrongHash }), 'NarHash'],
        ['NarSize', narInfoText(f, { narSize: f.narInfo.narSize + 8 }), 'NarSize'],
        ['FileSize', narInfoText(f, { fileSize: f.file.length + 1 }), 'FileSize'],
        [
          'another path',
          narInfoText(f, { storePath: `/nix/store/${randomHashPart()}-tamper` }),
          'another path',
        ],
        ['no FileHash', narInfoText(f, { fileHash: undefined, fileSize: undefined }), 'FileHash'],
        ['a URL that is not its NAR', narInfoText(f, { url: 'nar/elsewhere.nar.xz' }), 'URL'],
        [
          'a NAR not uploaded',
          narInfoText(missingNar, { storePath: f.storePath }),
          'upload it first',
        ],
        ['bzip2 (cannot be checked)', narInfoText(f, { compression: 'bzip2' }), 'bzip2'],
        ['not a narinfo', 'hello\n', ''],
      ];
      for (const [what, text, message] of bad) {
        const res = await request(nw, 'PUT', `/${f.hash}.narinfo`, text, auth.writer);
        expect({ what, status: res.statusCode }).toEqual({ what, status: 400 });
        expect(res.body).toContain(message);
      }
      expect(await state(nw, upstream)).toEqual(before);
      expect((await request(nw, 'GET', `/${f.hash}.narinfo`)).statusCode).toBe(404);
      // The NAR itself is untouched, and the right narinfo is still accepted.
      expect(storedSize(nw, f.narName)).toBe(f.file.length);
      const good = await request(nw, 'PUT', `/${f.hash}.narinfo`, narInfoText(f), auth.writer);
      expect(good.statusCode).toBe(200);
    });
  });

  it('decodes Content-Encoding (gzip, br); an unknown one is 415', async () => {
    const f = await makeStorePath([]);
    const g = await makeStorePath([]);
    for (const x of [f, g]) {
      expect((await request(nw, 'PUT', `/nar/${x.narName}`, x.file, auth.writer)).statusCode).toBe(
        200,
      );
    }
    const gz = await request(nw, 'PUT', `/${f.hash}.narinfo`, gzipSync(narInfoText(f)), {
      ...auth.writer,
      'content-encoding': 'gzip',
    });
    expect(gz.statusCode, gz.body).toBe(200);
    const br = await request(nw, 'PUT', `/${g.hash}.narinfo`, brotliCompressSync(narInfoText(g)), {
      ...auth.writer,
      'content-encoding': 'br',
    });
    expect(br.statusCode, br.body).toBe(200);
    const odd = await request(nw, 'PUT', `/log/${randomHashPart()}-x.drv`, 'x', {
      ...auth.writer,
      'content-encoding': 'compress',
    });
    expect(odd.statusCode).toBe(415);
    const broken = await request(nw, 'PUT', `/log/${randomHashPart()}-y.drv`, 'not gzip', {
      ...auth.writer,
      'content-encoding': 'gzip',
    });
    expect(broken.statusCode).toBe(400);
  });

  it('listings (before the narinfo, as Nix sends them), logs and realisations', async () => {
    const f = await makeStorePath([]);
    const listing = '{"version":1,"root":{"type":"regular","size":4096,"narOffset":96}}';
    const ls = await request(nw, 'PUT', `/${f.hash}.ls`, listing, auth.writer);
    expect(ls.statusCode).toBe(200);
    expect(
      (await request(nw, 'PUT', `/${f.hash}.ls`, '{"version":2}', auth.writer)).statusCode,
    ).toBe(400);
    await upload(nw, f, auth.writer);
    expect((await request(nw, 'GET', `/${f.hash}.ls`)).body).toBe(listing);
    // Once the path is here its listing stays.
    const other = listing.replace('4096', '4097');
    expect((await request(nw, 'PUT', `/${f.hash}.ls`, other, auth.writer)).statusCode).toBe(409);
    expect((await request(nw, 'PUT', `/${f.hash}.ls`, listing, auth.writer)).statusCode).toBe(200);

    const drv = `${randomHashPart()}-thing.drv`;
    const log = await request(nw, 'PUT', `/log/${drv}`, brotliCompressSync('building thing\n'), {
      ...auth.writer,
      'content-type': 'text/plain; charset=utf-8',
      'content-encoding': 'br',
    });
    expect(log.statusCode).toBe(200);
    expect((await request(nw, 'GET', `/log/${drv}`)).body).toBe('building thing\n');
    expect((await request(nw, 'PUT', '/log/not-a-store-path', 'x', auth.writer)).statusCode).toBe(
      400,
    );

    const out = `${randomHashPart()}-thing`;
    const id = `sha256:${'1'.repeat(64)}!out`;
    const doc = JSON.stringify({ id, outPath: out, signatures: [], dependentRealisations: {} });
    const path = `/realisations/${id}.doi`;
    expect((await request(nw, 'PUT', path, doc, auth.writer)).statusCode).toBe(200);
    expect((await request(nw, 'GET', path)).body).toBe(doc);
    expect((await request(nw, 'PUT', path, doc, auth.writer)).statusCode).toBe(200);
    const otherDoc = doc.replace(out, `${randomHashPart()}-thing`);
    expect((await request(nw, 'PUT', path, otherDoc, auth.writer)).statusCode).toBe(409);
    expect((await request(nw, 'PUT', path, '{"id":1}', auth.writer)).statusCode).toBe(400);
  });

  it('PUT /nix-cache-info is accepted when it names this store, refused otherwise', async () => {
    const ok = 'StoreDir: /nix/store\nWantMassQuery: 1\n';
    expect((await request(nw, 'PUT', '/nix-cache-info', ok, auth.writer)).statusCode).toBe(200);
    const other = 'StoreDir: /gnu/store\n';
    expect((await request(nw, 'PUT', '/nix-cache-info', other, auth.writer)).statusCode).toBe(400);
    expect((await request(nw, 'GET', '/nix-cache-info')).body).toContain('StoreDir: /nix/store');
  });

  describe('deletes', () => {
    it('DELETE /<hash>.narinfo removes it, its listing and its NAR, and it is not served from memory', async () => {
      const f = await makeStorePath([]);
      const listing = '{"version":1,"root":{"type":"regular","size":4096,"narOffset":96}}';
      expect((await request(nw, 'PUT', `/${f.hash}.ls`, listing, auth.writer)).statusCode).toBe(
        200,
      );
      await upload(nw, f, auth.writer);
      expect((await request(nw, 'GET', `/${f.hash}.narinfo`)).statusCode).toBe(200); // remembered
      const before = dbCounts(nw);
      const res = await request(nw, 'DELETE', `/${f.hash}.narinfo`, undefined, auth.deleter);
      expect(res.statusCode).toBe(200);
      expect((await request(nw, 'GET', `/${f.hash}.narinfo`)).statusCode).toBe(404);
      expect((await request(nw, 'GET', `/${f.hash}.ls`)).statusCode).toBe(404);
      expect((await request(nw, 'GET', `/nar/${f.narName}`)).statusCode).toBe(404);
      expect(await readOrNull(objectPath(nw, f.narName))).toBeNull();
      expect(dbCounts(nw)).toEqual({
        narinfos: before.narinfos - 1,
        narFiles: before.narFiles - 1,
        stored: before.stored - 1,
      });
      expect(
        (await request(nw, 'DELETE', `/${f.hash}.narinfo`, undefined, auth.deleter)).statusCode,
      ).toBe(404);
      // It can be uploaded again.
      await upload(nw, f, auth.writer);
    });

    it('DELETE /nar/<file> removes the NAR and every narinfo pointing at it', async () => {
      const f = await makeStorePath([]);
      await upload(nw, f, auth.writer);
      const before = dbCounts(nw);
      const res = await request(nw, 'DELETE', `/nar/${f.narName}`, undefined, auth.deleter);
      expect(res.statusCode).toBe(200);
      expect((await request(nw, 'GET', `/${f.hash}.narinfo`)).statusCode).toBe(404);
      expect(await readOrNull(objectPath(nw, f.narName))).toBeNull();
      expect(dbCounts(nw)).toEqual({
        narinfos: before.narinfos - 1,
        narFiles: before.narFiles - 1,
        stored: before.stored - 1,
      });
      const again = await request(nw, 'DELETE', `/nar/${f.narName}`, undefined, auth.deleter);
      expect(again.statusCode).toBe(404);
      expect((await request(nw, 'DELETE', '/nar/x.nar', undefined, auth.deleter)).statusCode).toBe(
        400,
      );
    });
  });

  it('a token of the right kind can also be sent as Bearer; the user name of Basic does not matter', async () => {
    const token = await makeToken(nw, 'bearer-writer', ['write']);
    const f = await makeStorePath([]);
    const nar = await request(nw, 'PUT', `/nar/${f.narName}`, f.file, bearer(token));
    expect(nar.statusCode).toBe(200);
    forgetTokens(nw);
    const info = await request(nw, 'PUT', `/${f.hash}.narinfo`, narInfoText(f), basic(token, ''));
    expect(info.statusCode).toBe(200);
  });
});

describe('with --cache-require-trusted-signature', () => {
  const upstream = new FakeUpstream();
  const nw = useNarwhal([upstream], () => ({
    'cache-upstream-url': [upstream.url],
    'cache-upstream-public-key': [upstreamKey.publicText],
    'cache-upload-public-key': [ciKey.publicText],
    'cache-allow-put-verb': 'true',
    'cache-require-trusted-signature': 'true',
  }));

  it('accepts a narinfo signed by an upload key (or an upstream key), refuses an unsigned one', async () => {
    const writer = basic(await makeToken(nw, 'ci', ['write']));
    const unsigned = await makeStorePath([]);
    await request(nw, 'PUT', `/nar/${unsigned.narName}`, unsigned.file, writer);
    const refused = await request(
      nw,
      'PUT',
      `/${unsigned.hash}.narinfo`,
      narInfoText(unsigned),
      writer,
    );
    expect(refused.statusCode).toBe(400);
    expect(refused.body).toContain('trusted key');
    const byStranger = sign({ ...unsigned.narInfo }, [makeKey('stranger-1')]);
    const strange = await request(
      nw,
      'PUT',
      `/${unsigned.hash}.narinfo`,
      serializeNarInfo(byStranger),
      writer,
    );
    expect(strange.statusCode).toBe(400);
    sign(unsigned.narInfo, [ciKey]);
    const accepted = await request(
      nw,
      'PUT',
      `/${unsigned.hash}.narinfo`,
      narInfoText(unsigned),
      writer,
    );
    expect(accepted.statusCode).toBe(200);
    const byUpstreamKey = await makeStorePath([upstreamKey]);
    await upload(nw, byUpstreamKey, writer);
    // The upload's own signature is kept, narwhal's is added.
    const served = (await request(nw, 'GET', `/${unsigned.hash}.narinfo`)).body;
    expect(served).toContain(unsigned.narInfo.sigs[0]);
    expect(ownSigs(parseNarInfo(served, { storeDir: '/nix/store' }))).toHaveLength(1);
  });
});

describe('without --cache-allow-put-verb and --cache-allow-delete-verb (the default)', () => {
  const upstream = new FakeUpstream();
  const nw = useNarwhal([upstream], () => ({
    'cache-upstream-url': [upstream.url],
    'cache-upstream-public-key': [upstreamKey.publicText],
  }));

  it('PUT and DELETE are 405 even with a token that may write and delete', async () => {
    const token = basic(await makeToken(nw, 'all', ['read', 'write', 'delete']));
    const f = await makeStorePath([]);
    for (const [method, url] of [
      ['PUT', `/nar/${f.narName}`],
      ['PUT', `/${f.hash}.narinfo`],
      ['DELETE', `/${f.hash}.narinfo`],
      ['DELETE', `/nar/${f.narName}`],
    ] as const) {
      const res = await request(nw, method, url, method === 'PUT' ? f.file : undefined, token);
      expect({ method, url, status: res.statusCode }).toEqual({ method, url, status: 405 });
    }
    expect(dbCounts(nw)).toEqual({ narinfos: 0, narFiles: 0, stored: 0 });
  });
});
