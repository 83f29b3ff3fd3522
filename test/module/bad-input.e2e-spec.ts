import { beforeAll, describe, expect, it } from 'vitest';
import { snapshot } from '../support/files';
import { sha256Nix32 } from '../support/hash';
import { rawRequest } from '../support/http-client';
import { dbCounts } from '../support/narwhal-app';
import { randomHashPart } from '../support/store-paths';
import { useTwoUpstreams } from '../support/two-upstreams';

/**
 * Requests narwhal must refuse before doing any work: malformed narinfo and NAR names (400), paths
 * with dot segments sent verbatim over a socket (400), unknown paths (404), overlong names, and
 * uploads (405) — none of which may touch storage, the database or an upstream.
 */

const { primary, secondary, nw, inject } = useTwoUpstreams();

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
    `/log/${good}-x.drv/more`,
    `/realisations/x/y.doi`,
    '/nix-cache-info/more',
    '/nar',
    '/narinfo',
  ];

  const badDocuments: [string, string][] = [
    ['a listing of a bad hash', `/${good.slice(0, 31)}e.ls`],
    ['a listing with an encoded slash', `/${good.slice(0, 15)}%2F${good.slice(16)}.ls`],
    ['a log of a name that is no store path', `/log/${good}`],
    ['a log with an encoded traversal', '/log/..%2F..%2Fetc%2Fpasswd'],
    ['a realisation id with a nix32 hash', `/realisations/sha256:${goodFile}!out.doi`],
    ['a realisation id without output', `/realisations/sha256:${'a'.repeat(64)}.doi`],
    ['a build trace of a non-derivation', `/build-trace-v2/${good}-x/out.doi`],
    ['a build trace with a bad output name', `/build-trace-v2/${good}-x.drv/o%20t.doi`],
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
    expect((await rawRequest(nw.port, 'GET', path)).status).toBe(400);
  });

  it.each(badNarRaw)('HEAD of a NAR path with %s, sent verbatim → 400', async (_what, path) => {
    expect((await rawRequest(nw.port, 'HEAD', path)).status).toBe(400);
  });

  it('an overlong narinfo or NAR name is refused with a 4xx (400, 404 or 414), never 5xx', async () => {
    for (const url of [`/${'a'.repeat(300)}.narinfo`, `/nar/${goodFile.repeat(4)}.nar`]) {
      const res = await inject('GET', url);
      expect([400, 404, 414]).toContain(res.statusCode);
    }
  });

  it.each(badDocuments)('GET and HEAD of %s → 400', async (_what, url) => {
    expect((await inject('GET', url)).statusCode).toBe(400);
    expect((await inject('HEAD', url)).statusCode).toBe(400);
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
  it.each(writes)('%s %s (%s) → 405 with Allow: GET, HEAD', async (method, url, type, payload) => {
    const res = await nw.app.inject({
      method: method as 'PUT',
      url,
      headers: type ? { 'content-type': type } : {},
      payload: payload || undefined,
    });
    expect(res.statusCode).toBe(405);
    expect(res.headers.allow).toBe('GET, HEAD');
  });

  it('none of the bad requests above touched storage, the database or an upstream', async () => {
    expect(await snapshot(nw.storeRoot)).toEqual(before.files);
    expect(primary.requests.length + secondary.requests.length).toBe(before.requests);
    expect(dbCounts(nw)).toEqual(before.db);
  });
});
