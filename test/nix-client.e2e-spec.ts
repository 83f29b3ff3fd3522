import { createPublicKey, verify } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BACKENDS, type Backend } from './support/backends';
import { CuttingProxy } from './support/cutting-proxy';
import { FakeUpstream } from './support/fake-upstream';
import { listFiles } from './support/files';
import { httpGet } from './support/http-client';
import { NarwhalProcess } from './support/narwhal-process';
import {
  buildFixtures,
  nixCopyFrom,
  nixEnv,
  parseNarInfo,
  readUpstreamNarInfo,
  requireNix,
  run,
  runOk,
  type Fixtures,
  type NixStorePath,
  type ParsedNarInfo,
  type RunResult,
} from './support/nix';
import { pollUntil } from './support/wait';

/**
 * The real Nix client against narwhal, which proxies two real binary caches made by Nix itself:
 * upstream A (xz, key up-a-1) holds leaf ← mid ← top and two fault-injection victims,
 * upstream B (zstd, key up-b-1) holds a 32 MiB incompressible blob.
 * The steps run in order and share state.
 */

const haveNix = requireNix();

const MiB = 1024 * 1024;
const CONCURRENT_CLIENTS = 20;
/** How long the server may take to finish up after a response (store or discard a NAR). */
const SETTLING = { timeoutMs: 3_000, intervalMs: 100 };

describe.skipIf(!haveNix).each(BACKENDS)('real Nix client through narwhal on $name', (kind) => {
  let backend: Backend | null = null;
  let workDir: string;
  let dataPath: string;
  let fx: Fixtures;
  let upstreamA: FakeUpstream;
  let upstreamB: FakeUpstream;
  let narwhal: NarwhalProcess;
  let narwhalKey: string;
  let clientStores = 0;
  let fixtureMs = 0;

  beforeAll(async () => {
    workDir = await mkdtemp(join(tmpdir(), 'narwhal-e2e-'));
    dataPath = join(workDir, 'narwhal-data');
    const started = Date.now();
    fx = await buildFixtures(workDir);
    fixtureMs = Date.now() - started;
    backend = await kind.start();
    if (!backend) return; // a service is unreachable outside CI: the tests below skip
    upstreamA = await FakeUpstream.start({ root: fx.upstreamA.dir });
    upstreamB = await FakeUpstream.start({ root: fx.upstreamB.dir });
    narwhal = await startNarwhal();
    narwhalKey = await narwhal.publicKey();
  });

  afterAll(async () => {
    console.info(`fixtures took ${fixtureMs} ms`);
    await narwhal?.kill();
    await upstreamA?.close();
    await upstreamB?.close();
    await backend?.close();
    if (workDir && process.env.NARWHAL_E2E_KEEP !== '1') {
      // Client stores hold read-only store paths; make them writable before removing.
      await run('chmod', ['-R', 'u+w', workDir]);
      await rm(workDir, { recursive: true, force: true });
    } else if (workDir) {
      console.info(`kept ${workDir}`);
    }
  });

  beforeEach(({ onTestFailed, skip }) => {
    if (!backend) skip();
    onTestFailed(() => {
      console.error(`narwhal exit status: ${JSON.stringify(narwhal?.exitStatus())}`);
      console.error(`--- narwhal output (last 8000 chars) ---\n${narwhal?.logs().slice(-8000)}`);
      console.error(`upstream A requests: ${JSON.stringify(upstreamA?.requests)}`);
      console.error(`upstream B requests: ${JSON.stringify(upstreamB?.requests)}`);
    });
  });

  function startNarwhal(): Promise<NarwhalProcess> {
    return NarwhalProcess.start({
      dataPath,
      upstreamUrls: [upstreamA.url, upstreamB.url],
      upstreamPublicKeys: [fx.upstreamA.publicKey, fx.upstreamB.publicKey],
      // Lets the harness itself be tried against a stand-in server.
      entry: process.env.NARWHAL_E2E_ENTRY,
      env: backend?.env,
    });
  }

  /** Files in the data path and objects in external storage whose name contains one of `names`. */
  async function storedFiles(names: string[]): Promise<string[]> {
    const objects = (await backend!.objectNames()).filter((k) => names.some((n) => k.includes(n)));
    const files = (await listFiles(dataPath)).filter((f) =>
      names.some((n) => basename(f).includes(n)),
    );
    return [...files, ...objects];
  }

  function freshStore(): string {
    clientStores += 1;
    return join(workDir, `client-store-${clientStores}`);
  }

  /** `nix copy --from <narwhal>` into a fresh store, trusting only narwhal's key. */
  async function copyFromNarwhal(
    paths: NixStorePath[],
    key = narwhalKey,
  ): Promise<{ store: string; result: RunResult }> {
    const store = freshStore();
    const result = await nixCopyFrom(
      narwhal.url,
      store,
      key,
      paths.map((p) => p.path),
      nixEnv(join(workDir, 'xdg-cache')),
    );
    return { store, result };
  }

  /** Upstream requests (the /nix-cache-info probes of the health checks are kept apart). */
  function upstreamTraffic(): string[] {
    return [
      ...upstreamA.requests.map((r) => `A ${r.method} ${r.url}`),
      ...upstreamB.requests.map((r) => `B ${r.method} ${r.url}`),
    ];
  }

  async function narwhalNarInfo(fixture: NixStorePath): Promise<ParsedNarInfo> {
    const res = await httpGet(`${narwhal.url}/${fixture.hashPart}.narinfo`, { keepBody: true });
    expect(res.status, `GET /${fixture.hashPart}.narinfo (${res.error ?? 'no error'})`).toBe(200);
    return parseNarInfo(res.body.toString('utf8'));
  }

  it('1. nix copy --from narwhal fetches the whole closure, trusting only narwhal', async () => {
    const { store } = await copyFromNarwhal([fx.top]);
    const listed = await runOk('nix', ['path-info', '--store', store, '-r', fx.top.path], {
      env: nixEnv(join(workDir, 'xdg-cache')),
    });
    const paths = listed.stdout.split('\n').filter(Boolean).sort();
    expect(paths).toEqual([fx.leaf.path, fx.mid.path, fx.top.path].sort());
    // The client's lookups met narwhal's prefetches (narinfos of references, NARs of narinfos
    // asked for) and joined them or found them stored: no upstream document was fetched twice.
    for (const u of [upstreamA, upstreamB]) {
      const gets = u.requests.filter((r) => r.method === 'GET').map((r) => r.url.split('?')[0]);
      expect(gets.length, JSON.stringify(gets)).toBe(new Set(gets).size);
      expect(gets.filter((g) => g.endsWith('.narinfo')).length).toBeLessThanOrEqual(paths.length);
    }
  });

  it('2. a second client is served from narwhal without touching the upstreams', async () => {
    const before = upstreamTraffic();
    await copyFromNarwhal([fx.top]);
    expect(upstreamTraffic().slice(before.length)).toEqual([]);
  });

  it('3. nix-cache-info, pubkey and the re-signed narinfo', async () => {
    const info = await httpGet(`${narwhal.url}/nix-cache-info`, { keepBody: true });
    expect(info.status).toBe(200);
    expect(info.body.toString('utf8').split('\n')).toContain('StoreDir: /nix/store');

    const pubkey = await httpGet(`${narwhal.url}/pubkey`, { keepBody: true });
    expect(pubkey.status).toBe(200);
    expect(pubkey.body.toString('utf8').trim()).toBe(narwhalKey);
    const [keyName, keyBase64] = splitKey(narwhalKey);
    expect(Buffer.from(keyBase64, 'base64')).toHaveLength(32);

    const served = await narwhalNarInfo(fx.top);
    const upstream = await readUpstreamNarInfo(fx.upstreamA, fx.top);
    expect(served.fields.get('StorePath')).toBe(fx.top.path);
    expect(served.fields.get('URL')).toMatch(/^nar\//);
    for (const field of ['NarHash', 'NarSize', 'References']) {
      expect(served.fields.get(field), field).toBe(upstream.fields.get(field));
    }
    expect(served.sigs).toEqual(expect.arrayContaining(upstream.sigs));
    const own = served.sigs.filter((s) => s.startsWith(`${keyName}:`));
    expect(own, `a Sig by ${keyName}`).toHaveLength(1);
    // Sanity-check the fingerprint code on the upstream's signature, then narwhal's.
    expect(verifySig(upstream, upstream.sigs[0], fx.upstreamA.publicKey)).toBe(true);
    expect(verifySig(served, own[0], narwhalKey)).toBe(true);
  });

  it(`4. ${CONCURRENT_CLIENTS} concurrent downloads of a 32 MiB NAR share one upstream fetch`, async () => {
    upstreamB.throttle(16 * MiB);
    const narGetsBefore = upstreamB.narGets();
    try {
      const narinfo = await narwhalNarInfo(fx.blob);
      const url = required(narinfo, 'URL');
      const fileHash = required(narinfo, 'FileHash');
      const fileSize = Number(required(narinfo, 'FileSize'));
      expect(fileSize).toBeGreaterThanOrEqual(32 * MiB);

      const downloads = await Promise.all(
        Array.from({ length: CONCURRENT_CLIENTS }, () => httpGet(`${narwhal.url}/${url}`)),
      );
      expect(upstreamB.narGets() - narGetsBefore, 'NAR GETs on upstream B').toBe(1);
      for (const [i, d] of downloads.entries()) {
        expect({ client: i, status: d.status, clean: d.complete, error: d.error }).toEqual({
          client: i,
          status: 200,
          clean: true,
          error: undefined,
        });
        expect({ client: i, hash: `sha256:${d.sha256}`, size: d.bytes }).toEqual({
          client: i,
          hash: fileHash,
          size: fileSize,
        });
      }
    } finally {
      upstreamB.throttle(null);
    }

    const before = upstreamTraffic();
    await copyFromNarwhal([fx.blob]);
    expect(upstreamTraffic().slice(before.length)).toEqual([]);
  });

  describe('5. a NAR that arrives broken from upstream is neither served whole nor kept', () => {
    for (const [fault, victim] of [
      ['corrupt', () => fx.victimCorrupt],
      ['truncate', () => fx.victimTruncate],
    ] as const) {
      it(`upstream A ${fault}s the NAR`, async () => {
        const fixture = victim();
        const upstream = await readUpstreamNarInfo(fx.upstreamA, fixture);
        const upstreamUrl = required(upstream, 'URL');
        // Before narwhal sees the narinfo, in case it prefetches the NAR.
        if (fault === 'corrupt') upstreamA.corrupt(upstreamUrl);
        else upstreamA.truncate(upstreamUrl);
        const narGetsBefore = upstreamA.narGets();

        const served = await narwhalNarInfo(fixture);
        const url = required(served, 'URL');
        const fileHash = required(served, 'FileHash');
        const fileSize = Number(required(served, 'FileSize'));
        const names = narFileNames(upstream, served);

        const broken = await httpGet(`${narwhal.url}/${url}`);
        expect(upstreamA.narGets(), 'narwhal fetched the NAR from upstream A').toBeGreaterThan(
          narGetsBefore,
        );
        const cleanWholeBody =
          broken.status === 200 && broken.complete && broken.bytes === fileSize;
        expect(
          cleanWholeBody,
          `the NAR broken upstream (${fault}) was served as a clean, complete 200 ` +
            `(hash sha256:${broken.sha256}, expected ${fileHash} for the intact file)`,
        ).toBe(false);
        const leftBehind = await pollUntil(
          () => storedFiles(names),
          (f) => f.length === 0,
          SETTLING,
        );
        expect(leftBehind, `files named after the broken NAR (${fault}) in the data dir`).toEqual(
          [],
        );

        upstreamA.clearFaults();
        const good = await httpGet(`${narwhal.url}/${url}`);
        expect({ status: good.status, clean: good.complete, error: good.error }).toEqual({
          status: 200,
          clean: true,
          error: undefined,
        });
        expect({ hash: `sha256:${good.sha256}`, size: good.bytes }).toEqual({
          hash: fileHash,
          size: fileSize,
        });
        const stored = await pollUntil(
          () => storedFiles(names),
          (f) => f.length > 0,
          SETTLING,
        );
        expect(stored, `a file named after one of ${names.join(', ')}`).not.toEqual([]);
      });
    }
  });

  it('6. after a restart with both upstreams gone, cached paths are still served', async () => {
    await narwhal.stop();
    await upstreamA.close();
    await upstreamB.close();
    narwhal = await startNarwhal();
    narwhalKey = await narwhal.publicKey();

    const { store: topStore } = await copyFromNarwhal([fx.top]);
    const { store: blobStore } = await copyFromNarwhal([fx.blob]);
    const env = nixEnv(join(workDir, 'xdg-cache'));
    const top = await runOk('nix', ['path-info', '--store', topStore, '-r', fx.top.path], { env });
    expect(top.stdout.split('\n').filter(Boolean).sort()).toEqual(
      [fx.leaf.path, fx.mid.path, fx.top.path].sort(),
    );
    await runOk('nix', ['path-info', '--store', blobStore, fx.blob.path], { env });
  });

  it('7. a NAR download cut mid-way is resumed by Nix with a Range request, not failed', async () => {
    const narinfo = await narwhalNarInfo(fx.blob);
    const url = required(narinfo, 'URL');
    const fileSize = Number(required(narinfo, 'FileSize'));
    const proxy = await CuttingProxy.start(narwhal.url, /^\/nar\//, 8 * MiB);
    try {
      const store = freshStore();
      const copy = await runOk(
        'nix',
        [
          'copy',
          '--from',
          proxy.url,
          '--store',
          store,
          '--option',
          'trusted-public-keys',
          narwhalKey,
          fx.blob.path,
        ],
        { env: nixEnv(join(workDir, 'xdg-cache')), timeoutMs: 120_000 },
      );
      expect(copy.stderr).toMatch(/retrying from offset/);
      const nars = proxy.requests.filter((r) => r.path === `/${url}`);
      expect(nars).toHaveLength(2);
      expect(nars[0]).toMatchObject({ status: 200, cutAfter: 8 * MiB });
      expect(nars[0].range).toBeUndefined();
      const resumedAt = Number(/^bytes=(\d+)-$/.exec(nars[1].range ?? '')?.[1]);
      expect(resumedAt).toBeGreaterThan(0);
      expect(resumedAt).toBeLessThanOrEqual(8 * MiB);
      expect(nars[1]).toMatchObject({
        status: 206,
        contentRange: `bytes ${resumedAt}-${fileSize - 1}/${fileSize}`,
      });
      // Nix checked the NarHash of what it assembled: the path is valid in the client's store.
      await runOk('nix', ['path-info', '--store', store, fx.blob.path], {
        env: nixEnv(join(workDir, 'xdg-cache')),
      });
    } finally {
      await proxy.close();
    }
  });
});

function required(narinfo: ParsedNarInfo, field: string): string {
  const value = narinfo.fields.get(field);
  if (value === undefined) throw new Error(`narinfo has no ${field}`);
  return value;
}

function splitKey(key: string): [string, string] {
  const colon = key.indexOf(':');
  if (colon <= 0) throw new Error(`not a name:base64 key: ${key}`);
  return [key.slice(0, colon), key.slice(colon + 1)];
}

/** Verifies one `Sig` value of a narinfo against a `name:base64` public key. */
function verifySig(narinfo: ParsedNarInfo, sig: string, publicKey: string): boolean {
  const [sigName, sigBase64] = splitKey(sig);
  const [keyName, keyBase64] = splitKey(publicKey);
  if (sigName !== keyName) return false;
  const refs = required(narinfo, 'References')
    .split(' ')
    .filter(Boolean)
    .map((r) => `/nix/store/${r}`)
    .sort()
    .join(',');
  const fingerprint = [
    '1',
    required(narinfo, 'StorePath'),
    required(narinfo, 'NarHash'),
    required(narinfo, 'NarSize'),
    refs,
  ].join(';');
  const key = createPublicKey({
    key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(keyBase64, 'base64').toString('base64url') },
    format: 'jwk',
  });
  return verify(null, Buffer.from(fingerprint), key, Buffer.from(sigBase64, 'base64'));
}

/** Hash parts a stored copy of this NAR could be named after. */
function narFileNames(upstream: ParsedNarInfo, served: ParsedNarInfo): string[] {
  const names = new Set<string>();
  names.add(basename(required(served, 'URL')).split('.')[0]);
  for (const narinfo of [upstream, served]) {
    for (const field of ['FileHash', 'NarHash']) {
      const value = narinfo.fields.get(field);
      if (value) names.add(value.slice(value.indexOf(':') + 1));
    }
  }
  return [...names].filter((n) => n.length >= 32);
}
