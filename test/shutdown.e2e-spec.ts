import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { Agent } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FakeUpstream } from './support/fake-upstream';
import { sha256Nix32 } from './support/hash';
import { download, type Download } from './support/http-client';
import { NarwhalProcess } from './support/narwhal-process';
import { makeKey, type TestKey } from './support/signing-keys';
import { makeStorePath, type StorePathFixture } from './support/store-paths';
import { eventually } from './support/wait';

/**
 * Graceful shutdown of the built server (`dist/main.js`, run `npm run build` first): SIGTERM lets
 * the responses in flight finish (up to --shutdown-timeout), refuses new connections, closes idle
 * keep-alive connections at once and exits 0.
 */

const MiB = 1024 * 1024;
/** 64 KiB chunks every 31 ms: about 2 MiB/s, so an 8 MiB NAR takes about 4 s. */
const SLOW_CHUNK_DELAY_MS = 31;

/** Resolves with the error code of a TCP connect to 127.0.0.1:port, or 'connected'. */
function tryConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

describe('graceful shutdown', () => {
  let key: TestKey;
  let upstream: FakeUpstream;
  const dataPaths: string[] = [];
  let narwhal: NarwhalProcess | undefined;

  beforeAll(async () => {
    key = makeKey('shutdown-up-1');
    upstream = await FakeUpstream.start();
  });

  afterEach(async () => {
    await narwhal?.kill();
    narwhal = undefined;
  });

  afterAll(async () => {
    await upstream?.close();
    for (const p of dataPaths) await rm(p, { recursive: true, force: true });
  });

  async function start(env: NodeJS.ProcessEnv = {}): Promise<NarwhalProcess> {
    const dataPath = await mkdtemp(join(tmpdir(), 'narwhal-shutdown-'));
    dataPaths.push(dataPath);
    narwhal = await NarwhalProcess.start({
      dataPath,
      upstreamUrls: [upstream.url],
      upstreamPublicKeys: [key.publicText],
      env,
    });
    return narwhal;
  }

  /** An 8 MiB uncompressed NAR served at about 2 MiB/s. */
  async function publishSlowNar(): Promise<StorePathFixture> {
    const f = await makeStorePath([key], { name: 'slow', size: 8 * MiB, compression: 'none' });
    upstream.publish(f);
    upstream.set(`/${f.narInfo.url}`, {
      kind: 'serve',
      body: f.file,
      chunkDelayMs: SLOW_CHUNK_DELAY_MS,
    });
    return f;
  }

  /** Fetches the narinfo (so that narwhal knows the NAR), then starts downloading the NAR. */
  async function startDownload(nw: NarwhalProcess, f: StorePathFixture): Promise<Download> {
    const info = await fetch(`${nw.url}/${f.hash}.narinfo`);
    expect(info.status).toBe(200);
    await info.text();
    const d = download(`${nw.url}/nar/${f.narName}`);
    await eventually(() => d.received() >= 256 * 1024, 10_000, 'first 256 KiB of the NAR');
    return d;
  }

  it('stops an idle narwhal at once, even with an idle keep-alive connection open', async () => {
    const nw = await start();
    const agent = new Agent({ keepAlive: true });
    try {
      const res = await download(`${nw.url}/pubkey`, { agent }).done;
      expect(res.complete).toBe(true);
      const began = Date.now();
      nw.signal('SIGTERM');
      const exit = await nw.waitForExit();
      const ms = Date.now() - began;
      console.log(`idle narwhal stopped ${ms} ms after SIGTERM`);
      expect(exit).toEqual({ code: 0, signal: null });
      expect(ms).toBeLessThan(3000);
    } finally {
      agent.destroy();
    }
  });

  it('SIGTERM mid-download: the client gets the whole NAR, new connections are refused, exit 0', async () => {
    const nw = await start();
    const f = await publishSlowNar();
    const d = await startDownload(nw, f);
    expect(d.received()).toBeLessThan(f.file.length / 2);

    const began = Date.now();
    nw.signal('SIGTERM');
    await eventually(
      async () => (await tryConnect(nw.port)) === 'ECONNREFUSED',
      2000,
      'new connections refused',
    );
    const result = await d.done;
    const exit = await nw.waitForExit(15_000);
    console.log(`narwhal stopped ${Date.now() - began} ms after SIGTERM, mid-download`);

    expect(result.status).toBe(200);
    expect(result.complete).toBe(true);
    expect(result.bytes).toBe(f.file.length);
    expect(result.sha256).toBe(sha256Nix32(f.file));
    expect(exit).toEqual({ code: 0, signal: null });
    expect(nw.logs()).not.toMatch(/"level":"(error|fatal)"/);
  });

  it('--shutdown-timeout 1s: a download far from done is cut, and narwhal exits within about 1 s', async () => {
    const nw = await start({ SHUTDOWN_TIMEOUT: '1s' });
    const f = await publishSlowNar();
    const d = await startDownload(nw, f);

    const began = Date.now();
    nw.signal('SIGTERM');
    const exit = await nw.waitForExit(10_000);
    const ms = Date.now() - began;
    const result = await d.done;
    console.log(`narwhal stopped ${ms} ms after SIGTERM with --shutdown-timeout 1s`);

    expect(exit).toEqual({ code: 0, signal: null });
    expect(ms).toBeGreaterThanOrEqual(1000);
    expect(ms).toBeLessThan(2500);
    expect(result.status).toBe(200);
    expect(result.complete).toBe(false);
    expect(result.bytes).toBeLessThan(f.file.length);
    // The aborted download left no spool file and no object behind.
    const left = await readdir(dataPaths[dataPaths.length - 1], { recursive: true });
    expect(left.filter((p) => p.endsWith('.part') || p.includes(f.fileHash))).toEqual([]);
  });
});
