import { randomBytes } from 'node:crypto';
import { brotliCompressSync, gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { canonicalJson } from '../../src/nix/realisation';
import { signFingerprint } from '../../src/signing/keys';
import { waitStored } from '../support/narwhal-app';
import { sha256Nix32 } from '../support/hash';
import { makeStorePath, randomHashPart, sign } from '../support/store-paths';
import { useTwoUpstreams } from '../support/two-upstreams';

/**
 * The rest of the binary-cache protocol through Fastify inject against real local upstreams:
 * `<hash>.ls` (the upstream's, or made from the stored NAR), `/log/<drv>` and realisations — each
 * fetched once, checked, kept, and a 404 when no upstream has it.
 */

const { keyA, untrusted, primary, secondary, nw, inject } = useTwoUpstreams();

describe('<hash>.ls', () => {
  it("serves and keeps the upstream's listing", async () => {
    const hash = randomHashPart();
    const listing = JSON.stringify({
      version: 1,
      root: { type: 'directory', entries: { bin: { type: 'symlink', target: '/x' } } },
    });
    secondary.set(`/${hash}.ls`, { kind: 'serve', body: Buffer.from(listing) });
    const res = await inject('GET', `/${hash}.ls`);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.body).toBe(listing);
    const again = await inject('GET', `/${hash}.ls`);
    expect(again.body).toBe(listing);
    const head = await inject('HEAD', `/${hash}.ls`);
    expect(head.statusCode).toBe(200);
    expect(Number(head.headers['content-length'])).toBe(listing.length);
    expect(secondary.count('GET', `/${hash}.ls`)).toBe(1);
  });

  it('makes the listing from the stored NAR when no upstream has one, and keeps it', async () => {
    const f = await makeStorePath([keyA], { size: 5000 });
    primary.publish(f);
    // Not stored yet: nothing to make it from.
    expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
    expect((await inject('GET', `/${f.hash}.ls`)).statusCode).toBe(404);
    expect((await inject('GET', `/nar/${f.narName}`)).statusCode).toBe(200);
    await waitStored(nw, f.narName, f.file);
    const res = await inject('GET', `/${f.hash}.ls`);
    expect(res.statusCode).toBe(200);
    // One regular file; its bytes start after the 96 bytes of NAR framing before them.
    expect(JSON.parse(res.body)).toEqual({
      version: 1,
      root: { type: 'regular', size: 5000, narOffset: 96 },
    });
    const asked = primary.count('GET', `/${f.hash}.ls`);
    expect((await inject('GET', `/${f.hash}.ls`)).body).toBe(res.body);
    expect(primary.count('GET', `/${f.hash}.ls`)).toBe(asked);
  });

  it('a stored file that is not a NAR gives no listing (404), and no 4xx/5xx confusion', async () => {
    const notNar = randomBytes(3000);
    const f = await makeStorePath([keyA], { compression: 'none' });
    const file = notNar;
    const fileHash = sha256Nix32(file);
    const narInfo = sign(
      {
        ...f.narInfo,
        url: `nar/${fileHash}.nar`,
        fileHash: `sha256:${fileHash}`,
        fileSize: file.length,
        narHash: `sha256:${fileHash}`,
        narSize: file.length,
      },
      [keyA],
    );
    primary.setNarInfo(f.hash, narInfo);
    primary.set(`/nar/${fileHash}.nar`, { kind: 'serve', body: file });
    expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
    expect((await inject('GET', `/nar/${fileHash}.nar`)).statusCode).toBe(200);
    await waitStored(nw, `${fileHash}.nar`, file);
    expect((await inject('GET', `/${f.hash}.ls`)).statusCode).toBe(404);
  });

  it('an upstream answer that is not a listing is ignored; a bad hash is a 400', async () => {
    const hash = randomHashPart();
    primary.set(`/${hash}.ls`, { kind: 'serve', body: Buffer.from('<html>oops</html>') });
    expect((await inject('GET', `/${hash}.ls`)).statusCode).toBe(404);
    expect((await inject('GET', '/not-a-hash.ls')).statusCode).toBe(400);
  });
});

describe('/log/<drv>', () => {
  it('passes a build log through, removing its transport encoding, and keeps it', async () => {
    const drv = `${randomHashPart()}-hello-1.0.drv`;
    const text = `building '/nix/store/${drv}'...\n${'make[1]: compiling\n'.repeat(50_000)}`;
    primary.set(`/log/${drv}`, {
      kind: 'serve',
      body: brotliCompressSync(text),
      contentType: 'text/plain',
      headers: { 'content-encoding': 'br' },
    });
    const res = await inject('GET', `/log/${drv}`);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    expect(res.body).toBe(text);
    expect((await inject('GET', `/log/${drv}`)).body).toBe(text);
    expect(primary.count('GET', `/log/${drv}`)).toBe(1);
  });

  it('takes the log from a lower-priority upstream when the first has none (gzip-encoded)', async () => {
    const drv = `${randomHashPart()}-other.drv`;
    const log = randomBytes(300_000).toString('base64');
    secondary.set(`/log/${drv}`, {
      kind: 'serve',
      body: gzipSync(log),
      headers: { 'content-encoding': 'gzip' },
    });
    const res = await inject('GET', `/log/${drv}`);
    expect(res.statusCode).toBe(200);
    expect(res.body).toBe(log);
    expect(Number(res.headers['content-length'])).toBe(log.length);
  });

  it('a log no upstream has is a 404; a broken transfer is not kept; a bad name is a 400', async () => {
    expect((await inject('GET', `/log/${randomHashPart()}-none.drv`)).statusCode).toBe(404);
    const drv = `${randomHashPart()}-cut.drv`;
    primary.set(`/log/${drv}`, { kind: 'truncate', body: randomBytes(200_000) });
    expect((await inject('GET', `/log/${drv}`)).statusCode).toBe(404);
    primary.set(`/log/${drv}`, { kind: 'serve', body: Buffer.from('complete\n') });
    expect((await inject('GET', `/log/${drv}`)).body).toBe('complete\n');
    expect((await inject('GET', '/log/..%2Fetc%2Fpasswd')).statusCode).toBe(400);
  });
});

describe('realisations', () => {
  const drvHash = `sha256:${randomBytes(32).toString('hex')}`;
  const outPath = `${randomHashPart()}-ca-output`;

  /** A `realisations/` document as Nix writes it, signed by `keys`. */
  function realisation(id: string, keys: (typeof keyA)[]): string {
    const unsigned = { dependentRealisations: {}, id, outPath };
    const fingerprint = canonicalJson(unsigned);
    return JSON.stringify({
      ...unsigned,
      signatures: keys.map((k) => signFingerprint(k.secret, fingerprint)),
    });
  }

  it('passes a validly signed realisation through verbatim and keeps it', async () => {
    const id = `${drvHash}!out`;
    const doc = realisation(id, [keyA]);
    primary.set(`/realisations/${id}.doi`, { kind: 'serve', body: Buffer.from(doc) });
    const res = await inject('GET', `/realisations/${id}.doi`);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.body).toBe(doc);
    expect((await inject('GET', `/realisations/${id}.doi`)).body).toBe(doc);
    expect(primary.count('GET', `/realisations/${id}.doi`)).toBe(1);
  });

  it('rejects one whose trusted-key signature does not verify, and takes the next upstream', async () => {
    const id = `${drvHash}!dev`;
    const forged = JSON.parse(realisation(id, [keyA])) as { outPath: string };
    forged.outPath = `${randomHashPart()}-evil`;
    primary.set(`/realisations/${id}.doi`, {
      kind: 'serve',
      body: Buffer.from(JSON.stringify(forged)),
    });
    const good = realisation(id, [keyA]);
    secondary.set(`/realisations/${id}.doi`, { kind: 'serve', body: Buffer.from(good) });
    const res = await inject('GET', `/realisations/${id}.doi`);
    expect(res.statusCode).toBe(200);
    expect(res.body).toBe(good);
  });

  it('passes one signed only by keys narwhal does not know through for the client to judge', async () => {
    const id = `${drvHash}!lib`;
    const doc = realisation(id, [untrusted]);
    primary.set(`/realisations/${id}.doi`, { kind: 'serve', body: Buffer.from(doc) });
    expect((await inject('GET', `/realisations/${id}.doi`)).body).toBe(doc);
  });

  it('build-trace-v2 documents too; 404 when none has it; 400 for malformed paths', async () => {
    const drv = `${randomHashPart()}-ca.drv`;
    const doc = JSON.stringify({ outPath, signatures: [] });
    primary.set(`/build-trace-v2/${drv}/out.doi`, { kind: 'serve', body: Buffer.from(doc) });
    expect((await inject('GET', `/build-trace-v2/${drv}/out.doi`)).body).toBe(doc);
    expect((await inject('HEAD', `/build-trace-v2/${drv}/out.doi`)).statusCode).toBe(200);
    expect((await inject('GET', `/build-trace-v2/${drv}/missing.doi`)).statusCode).toBe(404);
    expect((await inject('GET', `/realisations/${drvHash}!missing.doi`)).statusCode).toBe(404);
    expect((await inject('GET', '/realisations/not-an-id.doi')).statusCode).toBe(400);
    expect((await inject('GET', `/build-trace-v2/not-a-drv/out.doi`)).statusCode).toBe(400);
  });
});
