import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { narInfoFingerprint } from '../../src/nix/fingerprint';
import { parseNarInfo, serializeNarInfo } from '../../src/nix/narinfo';
import {
  formatPublicKey,
  parsePublicKey,
  parseSecretKey,
  verifyFingerprint,
} from '../../src/signing/keys';
import { VERSION } from '../../src/version';
import { FakeUpstream, type Behaviour } from '../support/fake-upstream';
import { readOrNull, snapshot } from '../support/files';
import { sha256Nix32 } from '../support/hash';
import { httpGet, rawRequest } from '../support/http-client';
import {
  dbCounts,
  HOSTNAME,
  objectPath,
  ownSigs,
  spoolsRemoved,
  startNarwhal,
  storedSize,
  uncaughtDuring,
  waitStored,
  type Narwhal,
} from '../support/narwhal-app';
import { closedPortUrl } from '../support/ports';
import { makeKey, type TestKey } from '../support/signing-keys';
import {
  makeStorePath,
  randomHashPart,
  sign,
  STORE_DIR,
  type StorePathFixture,
} from '../support/store-paths';

/**
 * Module tests: the whole application built with createApp(config), driven through Fastify's
 * `inject` (and, where a broken connection must be observed, through a real listening socket),
 * against real node:http upstream caches whose narinfos and xz NARs are made and signed here.
 */

function flip(buf: Buffer): Buffer {
  const copy = Buffer.from(buf);
  copy[Math.floor(copy.length / 2)] ^= 0xff;
  return copy;
}

describe('narwhal over HTTP (module tests through Fastify inject)', () => {
  let keyA: TestKey;
  let keyB: TestKey;
  let untrusted: TestKey;
  let primary: FakeUpstream;
  let secondary: FakeUpstream;
  let nw: Narwhal;
  let narwhalKey: string;
  /** The same app also listens on 127.0.0.1 for the cases inject cannot show. */
  let port: number;
  let base: string;

  const inject = (method: 'GET' | 'HEAD', url: string) => nw.app.inject({ method, url });
  const injectRange = (url: string, range: string) =>
    nw.app.inject({ method: 'GET', url, headers: { range } });

  beforeAll(async () => {
    keyA = makeKey('up-a-1');
    keyB = makeKey('up-b-1');
    untrusted = makeKey('evil-1');
    primary = await FakeUpstream.start();
    secondary = await FakeUpstream.start();
    nw = await startNarwhal({
      'cache-upstream-url': [`${primary.url}?priority=10`, `${secondary.url}?priority=20`],
      'cache-upstream-public-key': [keyA.publicText, keyB.publicText],
      'cache-upstream-dialer-timeout': '1s',
      'cache-upstream-response-header-timeout': '2s',
      'cache-upstream-body-timeout': '5s',
    });
    narwhalKey = (await inject('GET', '/pubkey')).body.trim();
    await nw.listen();
    port = nw.port;
    base = nw.url;
  });

  afterAll(async () => {
    await primary?.close();
    await secondary?.close();
    await nw?.close();
  });

  describe('what the cache says about itself', () => {
    it('GET /nix-cache-info: text/x-nix-cache-info with StoreDir, WantMassQuery and Priority', async () => {
      const res = await inject('GET', '/nix-cache-info');
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toMatch(/^text\/x-nix-cache-info/);
      const lines = res.body.split('\n').filter(Boolean);
      expect(lines).toContain('StoreDir: /nix/store');
      expect(lines).toContain('WantMassQuery: 1');
      expect(lines).toContain('Priority: 40');
      for (const l of lines) expect(l).toMatch(/^[A-Za-z]+: \S+$/);
    });

    it('GET /pubkey: the public half of the key file narwhal generated, named after the hostname', async () => {
      const res = await inject('GET', '/pubkey');
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toMatch(/^text\/plain/);
      const secret = parseSecretKey(await readFile(join(nw.dataPath, 'secret-key'), 'utf8'));
      expect(res.body.trim()).toBe(formatPublicKey(secret));
      expect(parsePublicKey(res.body).name).toBe(HOSTNAME);
    });

    it('GET /: JSON with hostname, publicKey and version', async () => {
      const res = await inject('GET', '/');
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toMatch(/^application\/json/);
      expect(res.json()).toEqual({ hostname: HOSTNAME, publicKey: narwhalKey, version: VERSION });
    });

    it.each(['/nix-cache-info', '/pubkey', '/'])(
      'HEAD %s: 200 with the GET headers and length, no body',
      async (path) => {
        const get = await inject('GET', path);
        const head = await inject('HEAD', path);
        expect(head.statusCode).toBe(200);
        expect(head.body).toBe('');
        expect(head.headers['content-type']).toBe(get.headers['content-type']);
        expect(Number(head.headers['content-length'])).toBe(Buffer.byteLength(get.body));
      },
    );

    it('GET /healthz and /readyz answer 200 with status ok (readyz checks database and storage)', async () => {
      const live = await inject('GET', '/healthz');
      expect(live.statusCode).toBe(200);
      expect(live.json()).toMatchObject({ status: 'ok' });
      const ready = await inject('GET', '/readyz');
      expect(ready.statusCode).toBe(200);
      expect(ready.json()).toMatchObject({
        status: 'ok',
        details: { database: { status: 'up' }, storage: { status: 'up' } },
      });
    });
  });

  describe('narinfo', () => {
    it('GET of an upstream narinfo: rewritten URL, upstream Sig kept, a valid narwhal Sig added', async () => {
      const ref = `${randomHashPart()}-dep`;
      const f = await makeStorePath([keyA], { references: [ref] });
      primary.publish(f);
      const res = await inject('GET', `/${f.hash}.narinfo`);
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toMatch(/^text\/x-nix-narinfo/);
      const served = parseNarInfo(res.body, { storeDir: STORE_DIR });
      expect(served).toMatchObject({
        storePath: f.storePath,
        url: `nar/${f.fileHash}.nar.xz`,
        compression: 'xz',
        fileHash: `sha256:${f.fileHash}`,
        fileSize: f.file.length,
        narHash: f.narInfo.narHash,
        narSize: f.narInfo.narSize,
        references: [ref],
        deriver: f.narInfo.deriver,
      });
      expect(served.sigs).toContain(f.narInfo.sigs[0]);
      expect(served.sigs).toHaveLength(2);
      const own = ownSigs(served);
      expect(own).toHaveLength(1);
      const fp = narInfoFingerprint(served, STORE_DIR);
      expect(verifyFingerprint(own[0], fp, [parsePublicKey(narwhalKey)])).toBe(true);
      expect(verifyFingerprint(f.narInfo.sigs[0], fp, [parsePublicKey(keyA.publicText)])).toBe(
        true,
      );
      expect(primary.count('GET', `/${f.hash}.narinfo`)).toBe(1);
      expect(secondary.count(undefined, `/${f.hash}.narinfo`)).toBe(0);

      // A second GET comes from the database, with the same text.
      const again = await inject('GET', `/${f.hash}.narinfo`);
      expect(again.statusCode).toBe(200);
      expect(again.body).toBe(res.body);
      expect(primary.count(undefined, `/${f.hash}.narinfo`)).toBe(1);
    });

    it('HEAD of a narinfo: 200 with the GET length and no body; cold HEAD looks it up, warm HEAD does not ask again', async () => {
      const f = await makeStorePath([keyA]);
      primary.publish(f);
      const head = await inject('HEAD', `/${f.hash}.narinfo`);
      expect(head.statusCode).toBe(200);
      expect(head.body).toBe('');
      expect(head.headers['content-type']).toMatch(/^text\/x-nix-narinfo/);
      const full = await inject('GET', `/${f.hash}.narinfo`);
      expect(Number(head.headers['content-length'])).toBe(Buffer.byteLength(full.body));
      const head2 = await inject('HEAD', `/${f.hash}.narinfo`);
      expect(head2.statusCode).toBe(200);
      expect(primary.count(undefined, `/${f.hash}.narinfo`)).toBe(1);
      // HEAD never touches the NAR.
      expect(primary.count(undefined, `/nar/${f.narName}`)).toBe(0);
    });

    it('a hash no upstream has is a 404 for GET and HEAD, after asking each upstream', async () => {
      const hash = randomHashPart();
      const res = await inject('GET', `/${hash}.narinfo`);
      expect(res.statusCode).toBe(404);
      expect(primary.count('GET', `/${hash}.narinfo`)).toBe(1);
      expect(secondary.count('GET', `/${hash}.narinfo`)).toBe(1);
      const head = await inject('HEAD', `/${hash}.narinfo`);
      expect(head.statusCode).toBe(404);
    });

    it('a miss is not remembered: once an upstream has the narinfo, the next GET finds it', async () => {
      const f = await makeStorePath([keyA]);
      expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(404);
      primary.publish(f);
      expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
    });

    it('an upstream 404 for a narinfo raises no uncaught exception (it would crash `narwhal serve`)', async () => {
      const errors = await uncaughtDuring(async () => {
        expect((await inject('GET', `/${randomHashPart()}.narinfo`)).statusCode).toBe(404);
      });
      expect(errors).toEqual([]);
    });

    it('falls through to the next upstream when the first misses', async () => {
      const f = await makeStorePath([keyB]);
      secondary.publish(f);
      const res = await inject('GET', `/${f.hash}.narinfo`);
      expect(res.statusCode).toBe(200);
      expect(parseNarInfo(res.body, { storeDir: STORE_DIR }).sigs).toContain(f.narInfo.sigs[0]);
      expect(primary.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    });

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
        primary.set(`/${f.hash}.narinfo`, {
          kind: 'serve',
          body: body(f),
          contentType: 'text/x-nix-narinfo',
        });
        const res = await inject('GET', `/${f.hash}.narinfo`);
        expect(res.statusCode).toBe(404);
        expect(secondary.count('GET', `/${f.hash}.narinfo`)).toBe(1);
        // The trusted copy on the next upstream is taken instead.
        const good = await makeStorePath([keyB]);
        primary.set(`/${good.hash}.narinfo`, {
          kind: 'serve',
          body: body(good),
          contentType: 'text/x-nix-narinfo',
        });
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
      primary.set(`/${hash}.narinfo`, {
        kind: 'serve',
        body: Buffer.from(serializeNarInfo(other.narInfo)),
        contentType: 'text/x-nix-narinfo',
      });
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
      primary.set(`/${f.hash}.narinfo`, {
        kind: 'serve',
        body: Buffer.from(text),
        contentType: 'text/x-nix-narinfo',
      });
      const res = await inject('GET', `/${f.hash}.narinfo`);
      expect(res.statusCode).toBe(200);
      expect(res.body).not.toContain('\r');
      expect(parseNarInfo(res.body, { storeDir: STORE_DIR }).narHash).toBe(f.narInfo.narHash);
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

    it('a narinfo without FileHash/FileSize is served with a NarHash-named URL and no FileHash', async () => {
      const f = await makeStorePath([keyA], { withoutFileHash: true });
      primary.publish(f);
      const res = await inject('GET', `/${f.hash}.narinfo`);
      expect(res.statusCode).toBe(200);
      const served = parseNarInfo(res.body, { storeDir: STORE_DIR });
      expect(served.url).toBe(`nar/${f.narInfo.narHash.slice('sha256:'.length)}.nar.xz`);
      expect(served.fileHash).toBeUndefined();
      expect(served.fileSize).toBeUndefined();
      expect(
        verifyFingerprint(ownSigs(served)[0], narInfoFingerprint(served, STORE_DIR), [
          parsePublicKey(narwhalKey),
        ]),
      ).toBe(true);
    });

    it('20 concurrent GETs of one uncached hash make exactly one upstream narinfo request', async () => {
      const f = await makeStorePath([keyA]);
      primary.publish(f);
      primary.set(`/${f.hash}.narinfo`, {
        kind: 'serve',
        body: Buffer.from(serializeNarInfo(f.narInfo)),
        contentType: 'text/x-nix-narinfo',
        delayMs: 200,
      });
      const all = await Promise.all(
        Array.from({ length: 20 }, () => inject('GET', `/${f.hash}.narinfo`)),
      );
      expect(all.map((r) => r.statusCode)).toEqual(Array(20).fill(200));
      expect(new Set(all.map((r) => r.body)).size).toBe(1);
      expect(primary.count(undefined, `/${f.hash}.narinfo`)).toBe(1);
      expect(secondary.count(undefined, `/${f.hash}.narinfo`)).toBe(0);
    });

    it('20 concurrent GETs of one hash nobody has make one request per upstream and all get 404', async () => {
      const hash = randomHashPart();
      primary.set(`/${hash}.narinfo`, { kind: 'status', status: 404 });
      const all = await Promise.all(
        Array.from({ length: 20 }, () => inject('GET', `/${hash}.narinfo`)),
      );
      expect(all.map((r) => r.statusCode)).toEqual(Array(20).fill(404));
      expect(primary.count(undefined, `/${hash}.narinfo`)).toBe(1);
      expect(secondary.count(undefined, `/${hash}.narinfo`)).toBe(1);
    });
  });

  describe('NAR', () => {
    it('GET after the narinfo: the right bytes and length from upstream, then from storage without asking again', async () => {
      const f = await makeStorePath([keyA], { size: 300_000 });
      primary.publish(f);
      const info = parseNarInfo((await inject('GET', `/${f.hash}.narinfo`)).body, {
        storeDir: STORE_DIR,
      });
      const cold = await inject('GET', `/${info.url}`);
      expect(cold.statusCode).toBe(200);
      expect(cold.headers['content-type']).toBe('application/x-nix-nar');
      expect(cold.headers['x-narwhal-source']).toBe('download');
      expect(Number(cold.headers['content-length'])).toBe(f.file.length);
      expect(cold.rawPayload.equals(f.file)).toBe(true);
      expect(primary.count('GET', `/nar/${f.narName}`)).toBe(1);

      await waitStored(nw, f.narName, f.file);
      const warm = await inject('GET', `/${info.url}`);
      expect(warm.statusCode).toBe(200);
      expect(warm.headers['x-narwhal-source']).toBe('storage');
      expect(Number(warm.headers['content-length'])).toBe(f.file.length);
      expect(warm.rawPayload.equals(f.file)).toBe(true);
      expect(primary.count(undefined, `/nar/${f.narName}`)).toBe(1);
      expect(sha256Nix32(warm.rawPayload)).toBe(f.fileHash);
    });

    it('HEAD of a NAR does not download it (no upstream GET, nothing stored); HEAD of a stored one asks nobody', async () => {
      const f = await makeStorePath([keyA], { size: 100_000 });
      primary.publish(f);
      expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
      const before = await snapshot(nw.storeRoot);
      const head = await inject('HEAD', `/nar/${f.narName}`);
      expect(head.statusCode).toBe(200);
      expect(head.body).toBe('');
      expect(Number(head.headers['content-length'])).toBe(f.file.length);
      expect(primary.count('GET', `/nar/${f.narName}`)).toBe(0);
      expect(await snapshot(nw.storeRoot)).toEqual(before);

      expect((await inject('GET', `/nar/${f.narName}`)).statusCode).toBe(200);
      await waitStored(nw, f.narName, f.file);
      const seen = primary.requests.length;
      const warmHead = await inject('HEAD', `/nar/${f.narName}`);
      expect(warmHead.statusCode).toBe(200);
      expect(Number(warmHead.headers['content-length'])).toBe(f.file.length);
      expect(primary.requests.length).toBe(seen);
    });

    it('HEAD of a NAR raises no uncaught exception (it would crash `narwhal serve`)', async () => {
      const f = await makeStorePath([keyA]);
      primary.publish(f);
      expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
      const errors = await uncaughtDuring(async () => {
        expect((await inject('HEAD', `/nar/${f.narName}`)).statusCode).toBe(200);
      });
      expect(errors).toEqual([]);
    });

    it('HEAD of a NAR whose upstream copy is gone is a 404 (a 200 would make `nix copy` skip an upload)', async () => {
      const f = await makeStorePath([keyA]);
      primary.publish(f);
      expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
      primary.delete(`/nar/${f.narName}`);
      expect((await inject('HEAD', `/nar/${f.narName}`)).statusCode).toBe(404);
      expect(primary.count('GET', `/nar/${f.narName}`)).toBe(0);
    });

    it('HEAD of a NAR nobody announced is a 404 and asks no upstream for its bytes', async () => {
      const f = await makeStorePath([keyA]);
      const head = await inject('HEAD', `/nar/${f.narName}`);
      expect(head.statusCode).toBe(404);
      expect(primary.count('GET', `/nar/${f.narName}`)).toBe(0);
    });

    it('a stored NAR advertises byte ranges and answers a Range (Nix resuming) with 206 and those bytes', async () => {
      const f = await makeStorePath([keyA], { size: 300_000 });
      primary.publish(f);
      expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
      const whole = await inject('GET', `/nar/${f.narName}`);
      expect(whole.headers['accept-ranges']).toBe('bytes');
      await waitStored(nw, f.narName, f.file);
      const n = f.file.length;

      const resume = await injectRange(`/nar/${f.narName}`, 'bytes=1000-');
      expect(resume.statusCode).toBe(206);
      expect(resume.headers['x-narwhal-source']).toBe('storage');
      expect(resume.headers['content-range']).toBe(`bytes 1000-${n - 1}/${n}`);
      expect(Number(resume.headers['content-length'])).toBe(n - 1000);
      expect(resume.rawPayload.equals(f.file.subarray(1000))).toBe(true);

      const middle = await injectRange(`/nar/${f.narName}`, 'bytes=10-19');
      expect(middle.statusCode).toBe(206);
      expect(middle.rawPayload.equals(f.file.subarray(10, 20))).toBe(true);
      const tail = await injectRange(`/nar/${f.narName}`, 'bytes=-7');
      expect(tail.rawPayload.equals(f.file.subarray(n - 7))).toBe(true);

      const past = await injectRange(`/nar/${f.narName}`, `bytes=${n}-`);
      expect(past.statusCode).toBe(416);
      expect(past.headers['content-range']).toBe(`bytes */${n}`);
      // Several ranges or nonsense: the whole file, as the RFC allows.
      const several = await injectRange(`/nar/${f.narName}`, 'bytes=0-1,5-6');
      expect(several.statusCode).toBe(200);
      expect(several.rawPayload.equals(f.file)).toBe(true);
      const head = await inject('HEAD', `/nar/${f.narName}`);
      expect(head.headers['accept-ranges']).toBe('bytes');
      expect(primary.count('GET', `/nar/${f.narName}`)).toBe(1);
    });

    it('a Range on a NAR still downloading is served from the download, its end only once verified', async () => {
      const f = await makeStorePath([keyA], { size: 1_500_000 });
      primary.publish(f);
      primary.set(`/nar/${f.narName}`, { kind: 'serve', body: f.file, chunkDelayMs: 5 });
      expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
      const n = f.file.length;
      const [whole, ranged, early] = await Promise.all([
        inject('GET', `/nar/${f.narName}`),
        injectRange(`/nar/${f.narName}`, 'bytes=700000-'),
        injectRange(`/nar/${f.narName}`, 'bytes=0-99'),
      ]);
      expect(whole.statusCode).toBe(200);
      expect(ranged.statusCode).toBe(206);
      expect(ranged.headers['x-narwhal-source']).toBe('download');
      expect(ranged.headers['content-range']).toBe(`bytes 700000-${n - 1}/${n}`);
      expect(ranged.rawPayload.equals(f.file.subarray(700000))).toBe(true);
      expect(early.statusCode).toBe(206);
      expect(early.rawPayload.equals(f.file.subarray(0, 100))).toBe(true);
      expect(primary.count('GET', `/nar/${f.narName}`)).toBe(1);
    });

    it('20 concurrent cold GETs of one NAR share one upstream download and all get the right bytes', async () => {
      const f = await makeStorePath([keyA], { size: 2_000_000 });
      primary.publish(f);
      expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
      const all = await Promise.all(
        Array.from({ length: 20 }, () => inject('GET', `/nar/${f.narName}`)),
      );
      for (const r of all) {
        expect(r.statusCode).toBe(200);
        expect(r.rawPayload.equals(f.file)).toBe(true);
      }
      expect(primary.count('GET', `/nar/${f.narName}`)).toBe(1);
    });

    it('a NAR asked for without its narinfo is fetched from upstream nar/<name>, verified by the name, stored', async () => {
      const f = await makeStorePath([keyA]);
      secondary.set(`/nar/${f.narName}`, { kind: 'serve', body: f.file });
      const res = await inject('GET', `/nar/${f.narName}`);
      expect(res.statusCode).toBe(200);
      expect(res.rawPayload.equals(f.file)).toBe(true);
      expect(primary.count('GET', `/nar/${f.narName}`)).toBe(1); // asked first, missed
      expect(secondary.count('GET', `/nar/${f.narName}`)).toBe(1);
      await waitStored(nw, f.narName, f.file);
      const warm = await inject('GET', `/nar/${f.narName}`);
      expect(warm.headers['x-narwhal-source']).toBe('storage');
      expect(warm.rawPayload.equals(f.file)).toBe(true);
      expect(secondary.count('GET', `/nar/${f.narName}`)).toBe(1);
    });

    it('a NAR nobody has, asked for without a narinfo, is a 404', async () => {
      const f = await makeStorePath([keyA]);
      const res = await inject('GET', `/nar/${f.narName}`);
      expect(res.statusCode).toBe(404);
    });

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
      primary.set(`/${f.hash}.narinfo`, {
        kind: 'serve',
        body: Buffer.from(serializeNarInfo(f.narInfo)),
        contentType: 'text/x-nix-narinfo',
      });
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

    it('a client that goes away mid-download does not abort it: the NAR is stored for the next one', async () => {
      const f = await makeStorePath([keyA], { size: 1_500_000 });
      primary.publish(f);
      primary.set(`/nar/${f.narName}`, { kind: 'serve', body: f.file, chunkDelayMs: 20 });
      expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
      // The client hangs up as soon as the first bytes arrive.
      await httpGet(`${base}/nar/${f.narName}`, { stopAfterBytes: 1 });
      await waitStored(nw, f.narName, f.file);
      const warm = await inject('GET', `/nar/${f.narName}`);
      expect(warm.headers['x-narwhal-source']).toBe('storage');
      expect(warm.rawPayload.equals(f.file)).toBe(true);
      expect(primary.count('GET', `/nar/${f.narName}`)).toBe(1);
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

    it('a stored NAR that vanished from storage is fetched again (and stored again)', async () => {
      const f = await makeStorePath([keyA]);
      primary.publish(f);
      expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
      expect((await inject('GET', `/nar/${f.narName}`)).statusCode).toBe(200);
      await waitStored(nw, f.narName, f.file);
      await rm(objectPath(nw, f.narName));
      const res = await inject('GET', `/nar/${f.narName}`);
      expect(res.statusCode).toBe(200);
      expect(res.rawPayload.equals(f.file)).toBe(true);
      expect(primary.count('GET', `/nar/${f.narName}`)).toBe(2);
      await waitStored(nw, f.narName, f.file);
    });

    it('a NAR whose narinfo has no FileHash is verified by its NarHash', async () => {
      const f = await makeStorePath([keyA], { withoutFileHash: true });
      primary.publish(f);
      const info = parseNarInfo((await inject('GET', `/${f.hash}.narinfo`)).body, {
        storeDir: STORE_DIR,
      });
      const res = await inject('GET', `/${info.url}`);
      expect(res.statusCode).toBe(200);
      expect(res.rawPayload.equals(f.file)).toBe(true);
    });
  });

  describe('NAR bytes that are wrong (observed over a real socket)', () => {
    async function expectNotStored(narName: string): Promise<void> {
      // The writer discards its spool after the failure; wait for that, then look.
      await spoolsRemoved(nw);
      expect(await readOrNull(objectPath(nw, narName))).toBeNull();
      expect(storedSize(nw, narName)).toBeNull();
    }

    it.each<[string, (f: StorePathFixture) => Behaviour]>([
      ['a flipped byte (FileHash mismatch)', (f) => ({ kind: 'serve', body: flip(f.file) })],
      [
        'a truncated body (upstream connection dropped)',
        (f) => ({ kind: 'truncate', body: f.file }),
      ],
    ])(
      '%s: no clean 200, nothing stored; after the upstream is fixed the GET succeeds',
      async (_what, bad) => {
        const f = await makeStorePath([keyA], { size: 400_000 });
        primary.publish(f);
        primary.set(`/nar/${f.narName}`, bad(f));
        expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);

        const broken = await httpGet(`${base}/nar/${f.narName}`, { keepBody: true });
        expect({ cleanOk: broken.status === 200 && broken.complete }).toEqual({ cleanOk: false });
        expect(broken.body.equals(f.file)).toBe(false);
        expect(broken.status).not.toBe(404); // a 404 would make Nix believe the NAR is gone for good
        await expectNotStored(f.narName);

        primary.set(`/nar/${f.narName}`, { kind: 'serve', body: f.file });
        const fixed = await httpGet(`${base}/nar/${f.narName}`, { keepBody: true });
        expect(fixed.status).toBe(200);
        expect(fixed.complete).toBe(true);
        expect(fixed.body.equals(f.file)).toBe(true);
        await waitStored(nw, f.narName, f.file);
      },
    );

    it('a GET right after a download failed starts a new download instead of answering 404', async () => {
      // The failed download may still be cleaning up (spool closed, lock not yet released) when the
      // next request comes: that request must wait for it, not spin through its attempts and give
      // up with a 404. The window is short here; with the spool close delayed by 100 ms this failed
      // every round before the fix (seen once on CI with the real Nix client).
      for (let i = 0; i < 5; i++) {
        const f = await makeStorePath([keyA], { size: 200_000 });
        primary.publish(f);
        primary.set(`/nar/${f.narName}`, { kind: 'serve', body: flip(f.file) });
        expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
        const broken = await inject('GET', `/nar/${f.narName}`).catch(() => null);
        expect(broken?.rawPayload.equals(f.file) ?? false).toBe(false);
        primary.set(`/nar/${f.narName}`, { kind: 'serve', body: f.file });
        const fixed = await httpGet(`${base}/nar/${f.narName}`, { keepBody: true });
        expect({ round: i, status: fixed.status, complete: fixed.complete }).toEqual({
          round: i,
          status: 200,
          complete: true,
        });
        expect(fixed.body.equals(f.file)).toBe(true);
        expect(primary.count('GET', `/nar/${f.narName}`)).toBe(2);
      }
    });

    it('the NAR for a no-FileHash narinfo with other content (NarHash mismatch): no clean 200, nothing stored', async () => {
      const f = await makeStorePath([keyA], { withoutFileHash: true, size: 50_000 });
      const impostor = await makeStorePath([keyA], { size: 50_000 });
      primary.publish(f);
      const info = parseNarInfo((await inject('GET', `/${f.hash}.narinfo`)).body, {
        storeDir: STORE_DIR,
      });
      primary.set(`/nar/${f.narName}`, { kind: 'serve', body: impostor.file });
      const broken = await httpGet(`${base}/${info.url}`);
      expect({ cleanOk: broken.status === 200 && broken.complete }).toEqual({ cleanOk: false });
      await expectNotStored(info.url.slice('nar/'.length));
    });

    it('a NAR asked for without a narinfo whose upstream bytes do not hash to its name: no clean 200, nothing stored', async () => {
      const f = await makeStorePath([keyA], { size: 50_000 });
      primary.set(`/nar/${f.narName}`, { kind: 'serve', body: flip(f.file) });
      const broken = await httpGet(`${base}/nar/${f.narName}`, { keepBody: true });
      expect({ cleanOk: broken.status === 200 && broken.complete }).toEqual({ cleanOk: false });
      await expectNotStored(f.narName);
    });
  });

  describe('bad input', () => {
    const good = randomHashPart();
    const goodFile = sha256Nix32(Buffer.from(randomHashPart()));
    const badNarinfo: [string, string][] = [
      ['non-alphabet characters', `/${'Z'.repeat(32)}.narinfo`],
      ['31 characters', `/${good.slice(0, 31)}.narinfo`],
      ['33 characters', `/${good}0.narinfo`],
      ['upper case', `/${good.toUpperCase().replace(/^[0-9]/, 'A')}.narinfo`],
      ['the letter e', `/e${good.slice(1)}.narinfo`],
      ['the letter o', `/o${good.slice(1)}.narinfo`],
      ['the letter t', `/t${good.slice(1)}.narinfo`],
      ['the letter u', `/u${good.slice(1)}.narinfo`],
      ['an empty hash', '/.narinfo'],
      ['a dot inside', `/${good.slice(0, 16)}.${good.slice(17)}.narinfo`],
      ['an encoded NUL', `/${good.slice(0, 31)}%00.narinfo`],
      ['an encoded slash', `/${good.slice(0, 15)}%2F${good.slice(16)}.narinfo`],
    ];
    const badNar: [string, string][] = [
      ['non-alphabet characters', `/nar/${'Z'.repeat(52)}.nar`],
      ['51 characters', `/nar/${goodFile.slice(0, 51)}.nar`],
      ['53 characters', `/nar/${goodFile}0.nar`],
      ['upper case', `/nar/${goodFile.toUpperCase()}.nar.xz`],
      ['the letter e', `/nar/${goodFile.slice(0, 51)}e.nar`],
      ['the letter o', `/nar/${goodFile.slice(0, 51)}o.nar.xz`],
      ['the letter t', `/nar/${goodFile.slice(0, 51)}t.nar`],
      ['the letter u', `/nar/${goodFile.slice(0, 51)}u.nar`],
      ['bits beyond 256 (52 chars starting with z)', `/nar/z${goodFile.slice(1)}.nar`],
      ['an unknown extension', `/nar/${goodFile}.nar.rar`],
      ['a doubled extension', `/nar/${goodFile}.nar.xz.xz`],
      ['no .nar', `/nar/${goodFile}`],
      ['.narinfo under nar/', `/nar/${goodFile}.narinfo`],
      ['upper-case NAR', `/nar/${goodFile}.NAR`],
      ['encoded traversal', '/nar/..%2F..%2Fetc%2Fpasswd'],
      ['a nested path', '/nar/a/b'],
      ['a good name below a directory', `/nar/x/${goodFile}.nar.xz`],
      ['an empty segment', '/nar//x'],
    ];
    // Dot segments: inject (like fetch and http.get) normalizes them away before the request is
    // made, so these go over a raw socket exactly as written.
    const badNarRaw: [string, string][] = [
      ['encoded dot-dot', '/nar/%2e%2e'],
      ['a literal dot-dot', '/nar/..'],
      ['a single dot', '/nar/.'],
      ['a nested traversal', `/nar/../${goodFile}.nar`],
      ['an encoded nested traversal', '/nar/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd'],
      ['a traversal to a narinfo', `/nar/../${good}.narinfo`],
    ];
    const unknown = [
      '/foo',
      '/foo/bar',
      `/${good}`,
      `/${good}.ls`,
      `/log/${good}-x.drv`,
      `/realisations/sha256:${goodFile}!out.doi`,
      '/nix-cache-info/more',
      '/nar',
      '/narinfo',
    ];

    let before: { files: string[]; requests: number; db: ReturnType<typeof dbCounts> };
    beforeAll(async () => {
      expect(goodFile).toHaveLength(52);
      before = {
        files: await snapshot(nw.storeRoot),
        requests: primary.requests.length + secondary.requests.length,
        db: dbCounts(nw),
      };
    });

    it.each(badNarinfo)('GET and HEAD of a narinfo name with %s → 400', async (_what, url) => {
      const res = await inject('GET', url);
      expect(res.statusCode).toBe(400);
      expect(res.headers['content-type']).toMatch(/^text\/plain/);
      expect((await inject('HEAD', url)).statusCode).toBe(400);
    });

    it.each(badNar)('GET of a NAR name with %s → 400', async (_what, url) => {
      expect((await inject('GET', url)).statusCode).toBe(400);
    });

    it.each(badNar)('HEAD of a NAR name with %s → 400', async (_what, url) => {
      expect((await inject('HEAD', url)).statusCode).toBe(400);
    });

    it.each(badNarRaw)('GET of a NAR path with %s, sent verbatim → 400', async (_what, path) => {
      expect((await rawRequest(port, 'GET', path)).status).toBe(400);
    });

    it.each(badNarRaw)('HEAD of a NAR path with %s, sent verbatim → 400', async (_what, path) => {
      expect((await rawRequest(port, 'HEAD', path)).status).toBe(400);
    });

    it('an overlong narinfo or NAR name is refused with a 4xx (400, 404 or 414), never 5xx', async () => {
      for (const url of [`/${'a'.repeat(300)}.narinfo`, `/nar/${goodFile.repeat(4)}.nar`]) {
        const res = await inject('GET', url);
        expect([400, 404, 414]).toContain(res.statusCode);
      }
    });

    it.each(unknown)('GET %s → 404', async (url) => {
      expect((await inject('GET', url)).statusCode).toBe(404);
    });

    const writes: [string, string, string, string][] = [
      ['PUT', `/${good}.narinfo`, 'text/x-nix-narinfo', 'StorePath: /nix/store/x\n'],
      ['POST', `/${good}.narinfo`, 'text/x-nix-narinfo', 'StorePath: /nix/store/x\n'],
      ['DELETE', `/${good}.narinfo`, '', ''],
      ['PATCH', `/${good}.narinfo`, 'text/plain', 'x'],
      ['PUT', `/nar/${goodFile}.nar.xz`, 'application/x-nix-nar', 'nar bytes'],
      ['POST', `/nar/${goodFile}.nar.xz`, 'application/octet-stream', 'nar bytes'],
      ['DELETE', `/nar/${goodFile}.nar.xz`, '', ''],
      ['PUT', `/${good}.ls`, 'application/json', '{"version":1}'],
      ['PUT', `/log/${good}-x.drv`, 'text/plain', 'log'],
      // nix copy uploads whole NARs: the answer must not depend on the body's size.
      ['PUT', `/nar/${goodFile}.nar`, 'application/x-nix-nar', 'x'.repeat(3 * 1024 * 1024)],
      [
        'PUT',
        `/${good}.ls`,
        'application/json',
        `{"version":1,"pad":"${'x'.repeat(3 * 1024 * 1024)}"}`,
      ],
    ];
    it.each(writes)(
      '%s %s (%s) → 405 with Allow: GET, HEAD',
      async (method, url, type, payload) => {
        const res = await nw.app.inject({
          method: method as 'PUT',
          url,
          headers: type ? { 'content-type': type } : {},
          payload: payload || undefined,
        });
        expect(res.statusCode).toBe(405);
        expect(res.headers.allow).toBe('GET, HEAD');
      },
    );

    it('none of the bad requests above touched storage, the database or an upstream', async () => {
      expect(await snapshot(nw.storeRoot)).toEqual(before.files);
      expect(primary.requests.length + secondary.requests.length).toBe(before.requests);
      expect(dbCounts(nw)).toEqual(before.db);
    });
  });
});

describe('upstream priority (?priority=N, lower first)', () => {
  let key: TestKey;
  let low: FakeUpstream;
  let high: FakeUpstream;
  let nw: Narwhal;

  beforeAll(async () => {
    key = makeKey('up-1');
    low = await FakeUpstream.start();
    high = await FakeUpstream.start();
    // Given in the "wrong" order: the priority decides.
    nw = await startNarwhal({
      'cache-upstream-url': [`${low.url}?priority=50`, `${high.url}?priority=10`],
      'cache-upstream-public-key': [key.publicText],
    });
  });

  afterAll(async () => {
    await low?.close();
    await high?.close();
    await nw?.close();
  });

  it('asks the lower priority number first and stops at its answer', async () => {
    const f = await makeStorePath([key]);
    high.publish(f);
    const onLow = { ...f.narInfo, url: 'nar/low-copy.nar.xz' };
    low.publish(f, sign(onLow, [key]));
    const res = await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` });
    expect(res.statusCode).toBe(200);
    expect(high.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    expect(low.count(undefined, `/${f.hash}.narinfo`)).toBe(0);
    const nar = await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(nar.statusCode).toBe(200);
    expect(high.count('GET', `/nar/${f.narName}`)).toBe(1);
    expect(low.requests.filter((r) => r.url.startsWith('/nar/'))).toHaveLength(0);
    // `priority` is narwhal's setting, not part of the upstream's URL.
    expect([...high.requests, ...low.requests].filter((r) => r.url.includes('priority'))).toEqual(
      [],
    );
  });

  it('asks the higher number only after the lower one missed', async () => {
    const f = await makeStorePath([key]);
    low.publish(f);
    const res = await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` });
    expect(res.statusCode).toBe(200);
    const order = [
      ...high.requests.map((r) => ['high', r.url]),
      ...low.requests.map((r) => ['low', r.url]),
    ].filter(([, u]) => u === `/${f.hash}.narinfo`);
    expect(order).toHaveLength(2);
    expect(high.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    expect(low.count('GET', `/${f.hash}.narinfo`)).toBe(1);
  });
});

describe('upstream failures are misses, never 5xx', () => {
  let key: TestKey;
  let dead: string;
  let failing: FakeUpstream;
  let hanging: FakeUpstream;
  let good: FakeUpstream;
  let nw: Narwhal;
  let allBad: Narwhal;

  beforeAll(async () => {
    key = makeKey('up-1');
    dead = await closedPortUrl();
    failing = await FakeUpstream.start();
    failing.fallback = { kind: 'status', status: 500 };
    hanging = await FakeUpstream.start();
    hanging.fallback = { kind: 'hang' };
    good = await FakeUpstream.start();
    const timeouts = {
      'cache-upstream-public-key': [key.publicText],
      'cache-upstream-dialer-timeout': '500ms',
      'cache-upstream-response-header-timeout': '400ms',
      'cache-upstream-body-timeout': '2s',
    };
    nw = await startNarwhal({
      'cache-upstream-url': [dead, failing.url, hanging.url, good.url],
      ...timeouts,
    });
    allBad = await startNarwhal({
      'cache-upstream-url': [failing.url, hanging.url, dead],
      ...timeouts,
    });
  });

  afterAll(async () => {
    for (const u of [failing, hanging, good]) await u?.close();
    await nw?.close();
    await allBad?.close();
  });

  it('closed port, 500 and a timeout are skipped in order; the next upstream answers', async () => {
    const f = await makeStorePath([key]);
    good.publish(f);
    const started = Date.now();
    const res = await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` });
    expect(res.statusCode).toBe(200);
    expect(failing.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    expect(hanging.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    expect(good.count('GET', `/${f.hash}.narinfo`)).toBe(1);
    expect(Date.now() - started).toBeLessThan(5000);
    const nar = await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(nar.statusCode).toBe(200);
    expect(nar.rawPayload.equals(f.file)).toBe(true);
  });

  it('a hash the working upstream lacks is a 404', async () => {
    const res = await nw.app.inject({ method: 'GET', url: `/${randomHashPart()}.narinfo` });
    expect(res.statusCode).toBe(404);
  });

  it('when every upstream fails, narinfo GET and HEAD are 404', async () => {
    const hash = randomHashPart();
    const res = await allBad.app.inject({ method: 'GET', url: `/${hash}.narinfo` });
    expect(res.statusCode).toBe(404);
    expect(failing.count('GET', `/${hash}.narinfo`)).toBe(1);
    expect(hanging.count('GET', `/${hash}.narinfo`)).toBe(1);
    expect((await allBad.app.inject({ method: 'HEAD', url: `/${hash}.narinfo` })).statusCode).toBe(
      404,
    );
  });

  it('when every upstream fails, a NAR without a narinfo is a 404, and /readyz stays 200', async () => {
    const f = await makeStorePath([key]);
    const res = await allBad.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(res.statusCode).toBe(404);
    expect((await allBad.app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200);
  });

  it('a NAR upstream that stalls mid-body (body timeout): no clean 200, nothing stored', async () => {
    const f = await makeStorePath([key], { size: 300_000 });
    good.publish(f);
    good.set(`/nar/${f.narName}`, { kind: 'stall', body: f.file });
    expect((await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    await nw.listen();
    const res = await httpGet(`${nw.url}/nar/${f.narName}`);
    expect({ cleanOk: res.status === 200 && res.complete }).toEqual({ cleanOk: false });
    await spoolsRemoved(nw);
    expect(await readOrNull(objectPath(nw, f.narName))).toBeNull();
  });

  it('a NAR whose upstream answers 500 after its narinfo was served is not a 5xx', async () => {
    const f = await makeStorePath([key]);
    good.publish(f);
    expect((await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    good.set(`/nar/${f.narName}`, { kind: 'status', status: 500 });
    const res = await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(res.statusCode).toBeLessThan(500);
    expect(res.statusCode).not.toBe(200);
  });
});

describe('upstream credentials and query string', () => {
  let key: TestKey;
  let up: FakeUpstream;
  let other: FakeUpstream;
  let nw: Narwhal;
  const basic = `Basic ${Buffer.from('alice:s3cret').toString('base64')}`;

  beforeAll(async () => {
    key = makeKey('up-1');
    up = await FakeUpstream.start();
    other = await FakeUpstream.start();
    nw = await startNarwhal({
      'cache-upstream-url': [
        `${up.url.replace('http://', 'http://alice:s3cret@')}/?token=abc&priority=5`,
      ],
      'cache-upstream-public-key': [key.publicText],
    });
  });

  afterAll(async () => {
    await up?.close();
    await other?.close();
    await nw?.close();
  });

  it("sends the upstream's basic auth and query string with narinfo and NAR requests", async () => {
    const f = await makeStorePath([key]);
    up.publish(f);
    expect((await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    const nar = await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(nar.statusCode).toBe(200);
    expect(nar.rawPayload.equals(f.file)).toBe(true);
    const seen = up.requests.filter((r) => r.url.includes(f.hash) || r.url.includes(f.narName));
    expect(seen).toEqual([
      { method: 'GET', url: `/${f.hash}.narinfo?token=abc`, authorization: basic },
      { method: 'GET', url: `/nar/${f.narName}?token=abc`, authorization: basic },
    ]);
  });

  it('does not send the credentials to another host named by an absolute NAR URL', async () => {
    const f = await makeStorePath([key], { url: `${other.url}/blobs/cred-test.nar.xz` });
    up.set(`/${f.hash}.narinfo`, {
      kind: 'serve',
      body: Buffer.from(serializeNarInfo(f.narInfo)),
      contentType: 'text/x-nix-narinfo',
    });
    other.set('/blobs/cred-test.nar.xz', { kind: 'serve', body: f.file });
    expect((await nw.app.inject({ method: 'GET', url: `/${f.hash}.narinfo` })).statusCode).toBe(
      200,
    );
    const nar = await nw.app.inject({ method: 'GET', url: `/nar/${f.narName}` });
    expect(nar.statusCode).toBe(200);
    expect(other.requests).toEqual([
      { method: 'GET', url: '/blobs/cred-test.nar.xz', authorization: undefined },
    ]);
  });
});

describe('--cache-sign-narinfo false', () => {
  let key: TestKey;
  let up: FakeUpstream;
  let nw: Narwhal;

  beforeAll(async () => {
    key = makeKey('up-1');
    up = await FakeUpstream.start();
    nw = await startNarwhal({
      'cache-upstream-url': [up.url],
      'cache-upstream-public-key': [key.publicText],
      'cache-sign-narinfo': 'false',
    });
  });

  afterAll(async () => {
    await up?.close();
    await nw?.close();
  });

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
