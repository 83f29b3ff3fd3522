import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeUpstream } from '../support/fake-upstream';
import { printFigures, scaled } from '../support/figures';
import { snapshot } from '../support/files';
import { download, httpGet, type Download } from '../support/http-client';
import { NarwhalProcess, runNarwhalWith, type NarwhalOptions } from '../support/narwhal-process';
import {
  buildFixtures,
  dumpPathHash,
  nixCopyFrom,
  nixEnv,
  parseNarInfo,
  requireNix,
  run,
  type Fixtures,
  type NixStorePath,
} from '../support/nix';
import { mib } from '../support/proc-memory';
import { pollUntil } from '../support/wait';

/**
 * kill -9 during cold downloads, again and again, on the same data path: each restart must find no
 * spool file of the dead process left and `narwhal fsck` must find no problem; at the end the real
 * Nix client copies the closure through narwhal and gets the very bytes of the originals.
 * The upstreams are two binary caches made by `nix copy --to file://` (see buildFixtures), throttled
 * so that the NARs of the 32 MiB blob and of two 1 MiB paths are still downloading at each kill.
 */

const haveNix = requireNix();
const LOOPS = scaled(3, 10);
/** Per NAR response: the downloads are still running when the process is killed. */
const THROTTLE = 256 * 1024;
/** Each client has this much of its NAR when the process is killed. */
const KILL_AFTER_BYTES = 256 * 1024;

describe.skipIf(!haveNix)('kill -9 during cold downloads', () => {
  let workDir: string;
  let fx: Fixtures;
  let upstreamA: FakeUpstream;
  let upstreamB: FakeUpstream;
  let options: NarwhalOptions;
  let narwhal: NarwhalProcess | undefined;

  beforeAll(async () => {
    workDir = await mkdtemp(join(tmpdir(), 'narwhal-kill-loop-'));
    fx = await buildFixtures(join(workDir, 'fixtures'));
    upstreamA = await FakeUpstream.start({ root: fx.upstreamA.dir });
    upstreamB = await FakeUpstream.start({ root: fx.upstreamB.dir });
    options = {
      dataPath: join(workDir, 'narwhal-data'),
      upstreamUrls: [upstreamA.url, upstreamB.url],
      upstreamPublicKeys: [fx.upstreamA.publicKey, fx.upstreamB.publicKey],
    };
  });

  afterAll(async () => {
    await narwhal?.kill();
    await upstreamA?.close();
    await upstreamB?.close();
    if (workDir) {
      await run('chmod', ['-R', 'u+w', workDir]); // client stores hold read-only paths
      await rm(workDir, { recursive: true, force: true });
    }
  });

  beforeEach(({ onTestFailed }) => {
    onTestFailed(() => {
      console.error(`--- narwhal output (last 6000 chars) ---\n${narwhal?.logs().slice(-6000)}`);
    });
  });

  const spoolDir = () => join(options.dataPath, 'store', 'tmp');

  /** Starts narwhal on the data path (start 1 is fresh, the others follow a kill); checks it. */
  async function restart(start: number): Promise<NarwhalProcess> {
    const leftByKill = await snapshot(spoolDir());
    const t0 = performance.now();
    const started = await NarwhalProcess.start(options);
    narwhal = started;
    const readyMs = performance.now() - t0;
    const spoolsAfterStart = await snapshot(spoolDir());
    const fsck = await runNarwhalWith(options, 'fsck', [
      '--verify-content',
      '--orphan-grace',
      '0s',
    ]);
    const problems = /(\d+) problems found/.exec(fsck.output)?.[1] ?? '0';
    printFigures(`kill -9 loops: start ${start}`, {
      'spools left by the kill before': leftByKill.length,
      'their MiB': mib(leftByKill.reduce((n, s) => n + Number(s.split(':').pop()), 0)),
      'ms to ready': Math.round(readyMs),
      'spools after restart': spoolsAfterStart.length,
      'fsck exit': String(fsck.code),
      'fsck problems': problems,
    });
    expect(spoolsAfterStart).toEqual([]);
    expect(fsck.code, fsck.output).toBe(0);
    expect(fsck.output).toContain('no problems found');
    return started;
  }

  async function narUrl(n: NarwhalProcess, p: NixStorePath): Promise<string> {
    const res = await httpGet(`${n.url}/${p.hashPart}.narinfo`, { keepBody: true });
    expect(res.status, `narinfo of ${p.path}`).toBe(200);
    return `${n.url}/${parseNarInfo(res.body.toString('utf8')).fields.get('URL')}`;
  }

  it(`leaves no spool file and nothing for fsck after ${LOOPS} kills, and the closure copies byte for byte`, async () => {
    upstreamA.throttle(THROTTLE);
    upstreamB.throttle(THROTTLE);
    const victims = [fx.blob, fx.victimCorrupt, fx.victimTruncate];
    for (let loop = 1; loop <= LOOPS; loop++) {
      const n = await restart(loop);
      // The closure's narinfos are looked up; the NARs of the three big paths start, and crawl.
      for (const p of [fx.leaf, fx.mid, fx.top]) await narUrl(n, p);
      const downloads: Download[] = [];
      for (const p of victims) downloads.push(download(await narUrl(n, p)));
      const inFlight = await pollUntil(
        async () => ({
          spools: await snapshot(spoolDir()),
          receiving: downloads.filter((d) => d.received() >= KILL_AFTER_BYTES).length,
        }),
        (s) => s.receiving === victims.length && s.spools.length >= victims.length,
        { timeoutMs: 30_000, intervalMs: 100 },
      );
      expect(inFlight.receiving).toBe(victims.length);
      expect(inFlight.spools.length).toBeGreaterThanOrEqual(victims.length);

      await n.kill();
      const ended = await Promise.all(downloads.map((d) => d.done));
      expect(ended.filter((r) => r.complete)).toEqual([]);
    }

    const n = await restart(LOOPS + 1);
    upstreamA.throttle(null);
    upstreamB.throttle(null);
    const env = nixEnv(join(workDir, 'xdg-cache'));
    const store = join(workDir, 'client-store');
    const t0 = performance.now();
    await nixCopyFrom(
      n.url,
      store,
      await n.publicKey(),
      [fx.top.path, ...victims.map((p) => p.path)],
      env,
    );
    const copyMs = performance.now() - t0;
    const all = [fx.leaf, fx.mid, fx.top, ...victims];
    const differing: string[] = [];
    for (const p of all) {
      const [copied, original] = await Promise.all([
        dumpPathHash(p.path, env, store),
        dumpPathHash(p.path, env),
      ]);
      if (copied !== original) differing.push(p.path);
    }
    printFigures('kill -9 loops: nix copy after them', {
      paths: all.length,
      'copy ms': Math.round(copyMs),
      'paths differing from the originals': differing.length,
    });
    expect(differing).toEqual([]);
    expect(n.exitStatus()).toBeNull();
  });
});
