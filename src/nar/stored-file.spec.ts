import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { Agent, createServer, get, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { sendfileCounters, sendfileSupport, setSendfileLimit } from './sendfile';
import { SENDFILE_MIN_BYTES, StoredFile, type StoredFileOptions } from './stored-file';

/**
 * StoredFile against a real HTTP server and client, on a real file: each case read and written
 * through buffers, and again with sendfile (the native helper `npm ci` builds; in CI it must be
 * there).
 */

let dir: string;
let path: string;
const data = randomBytes(1024 * 1024 + 12_345); // two whole chunks and a part
let server: Server;
let base: string;
/**
 * What each request's sendTo resolved with, and the handle it used. A response of an earlier test
 * that ends late (its client gone) is not counted in a later test's (see `generation`).
 */
let sent: { bytes: number; fd: () => number; ended: boolean }[] = [];
/** Starts a new list for `sent`; responses to requests made before go to the old one. */
const newGeneration = () => (sent = []);
/** How the next request is answered: the range to send and the length to announce. */
let plan: {
  start: number;
  end: number;
  announce: number;
  file?: string;
  options?: StoredFileOptions;
} = { start: 0, end: 0, announce: 0 };
/** A file larger than what loopback socket buffers hold, for a client that leaves mid-way. */
let bigPath: string;
const BIG = 32 * 1024 * 1024;
const big = randomBytes(BIG);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stored-file-'));
  path = join(dir, 'x.nar');
  await writeFile(path, data);
  bigPath = join(dir, 'big.nar');
  await writeFile(bigPath, big);
  server = createServer((_req, res) => {
    void (async () => {
      const { start, end, announce, file, options } = plan;
      const list = sent;
      const handle = await open(file ?? path, 'r');
      res.writeHead(200, { 'content-length': announce });
      const bytes = await new StoredFile(handle, start, end, options).sendTo(res);
      list.push({ bytes, fd: () => handle.fd, ended: res.writableEnded });
    })();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise((r) => server.close(r));
  await rm(dir, { recursive: true, force: true });
});

/** GET with the whole body, whether it ended cleanly, and an error if the body broke. */
function fetchBody(
  abortAfter?: number,
  how: { agent?: Agent; pauseAfter?: number; onResponse?: (res: IncomingMessage) => void } = {},
): Promise<{ body: Buffer; complete: boolean; error?: Error }> {
  return new Promise((resolve) => {
    get(`${base}/`, { agent: how.agent }, (res: IncomingMessage) => {
      how.onResponse?.(res);
      const chunks: Buffer[] = [];
      let got = 0;
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        got += c.length;
        if (abortAfter !== undefined && got >= abortAfter) res.destroy();
        if (how.pauseAfter !== undefined && got >= how.pauseAfter) res.pause(); // a stalled client
      });
      const done = (error?: Error) =>
        resolve({ body: Buffer.concat(chunks), complete: res.complete, error });
      res.on('end', () => done());
      res.on('error', (e) => done(e));
      res.on('close', () => done());
    });
  });
}

async function lastSent(count: number) {
  for (let i = 0; i < 1000 && sent.length < count; i++) await new Promise((r) => setTimeout(r, 10));
  return sent[count - 1];
}

const inCi = process.env.CI === 'true';
if (!sendfileSupport.available && !inCi) {
  console.warn(`SKIPPING the sendfile cases of StoredFile: ${sendfileSupport.reason}`);
}

it('has the sendfile helper in CI (npm ci builds it)', () => {
  if (!inCi) return;
  expect(sendfileSupport).toEqual({ available: true, reason: undefined });
});

const modes: [string, StoredFileOptions][] = [['read and write', {}]];
if (sendfileSupport.available || inCi) {
  modes.push(['sendfile', { sendfile: { stallTimeoutMs: 0 } }]);
}

describe.each(modes)('StoredFile, %s', (mode, options) => {
  /** Transfers sendfile started during the test, which must be none without it. */
  let transfersBefore = 0;
  beforeEach(() => {
    newGeneration();
    transfersBefore = sendfileCounters.transfers;
  });
  const usedSendfile = () => sendfileCounters.transfers > transfersBefore;
  const expectSendfile = (large: boolean) =>
    expect(usedSendfile()).toBe(mode === 'sendfile' && large);

  it('sends the whole file, then closes it', async () => {
    plan = { start: 0, end: data.length - 1, announce: data.length, options };
    const got = await fetchBody();
    expect(got.complete).toBe(true);
    expect(got.body.equals(data)).toBe(true);
    const s = await lastSent(1);
    expect(s.bytes).toBe(data.length);
    expect(s.fd()).toBe(-1); // closed
    expectSendfile(data.length >= SENDFILE_MIN_BYTES);
  });

  it('sends a byte range', async () => {
    plan = { start: 300_000, end: 700_000, announce: 400_001, options };
    const got = await fetchBody();
    expect(got.complete).toBe(true);
    expect(got.body.equals(data.subarray(300_000, 700_001))).toBe(true);
    expect((await lastSent(1)).bytes).toBe(400_001);
    expectSendfile(false); // too small to be worth it
  });

  it('sends a large byte range from the middle of a file', async () => {
    const [start, end] = [1_000_003, 20_000_000];
    plan = { start, end, announce: end - start + 1, file: bigPath, options };
    const got = await fetchBody();
    expect(got.complete).toBe(true);
    expect(got.body.equals(big.subarray(start, end + 1))).toBe(true);
    expect((await lastSent(1)).bytes).toBe(end - start + 1);
    expectSendfile(true);
  });

  it('sends several large files one after another on one keep-alive connection', async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      for (const [start, end] of [
        [0, BIG - 1],
        [5, 3_000_000],
        [0, BIG - 1],
      ]) {
        plan = { start, end, announce: end - start + 1, file: bigPath, options };
        const got = await fetchBody(undefined, { agent });
        expect(got.complete).toBe(true);
        expect(got.body.equals(big.subarray(start, end + 1))).toBe(true);
      }
      const sockets = Object.values(agent.freeSockets).flat();
      expect(sockets).toHaveLength(1); // the one connection is still open and reusable
    } finally {
      agent.destroy();
    }
  });

  it('sends every one of more parallel responses than sendfile has slots', async () => {
    plan = { start: 0, end: BIG - 1, announce: BIG, file: bigPath, options };
    const before = setSendfileLimit(2);
    const all = await Promise.all(Array.from({ length: 4 }, () => fetchBody())).finally(() =>
      setSendfileLimit(before),
    );
    for (const got of all) {
      expect(got.complete).toBe(true);
      expect(got.body.equals(big)).toBe(true);
    }
    for (let i = 1; i <= all.length; i++) expect((await lastSent(i)).fd()).toBe(-1);
    expect(sendfileCounters.running()).toBe(0); // every slot given back
    expectSendfile(true);
  });

  it('breaks the body (never a clean end) when the file is shorter than announced', async () => {
    plan = { start: 0, end: data.length + 999, announce: data.length + 1000, options };
    const got = await fetchBody();
    expect(got.complete).toBe(false);
    expect(got.body.length).toBe(data.length);
    const s = await lastSent(1);
    expect(s.fd()).toBe(-1);
  });

  it('stops and closes the file when the client goes away', async () => {
    plan = { start: 0, end: BIG - 1, announce: BIG, file: bigPath, options };
    const got = await fetchBody(100_000);
    expect(got.complete).toBe(false);
    const s = await lastSent(1);
    expect(s.bytes).toBeLessThan(BIG);
    expect(s.fd()).toBe(-1);
    expect(sendfileCounters.running()).toBe(0);
  });
});

describe.runIf(sendfileSupport.available || inCi)('StoredFile with sendfile', () => {
  it('cuts a client that stops reading once the stall timeout has passed', async () => {
    newGeneration();
    plan = {
      start: 0,
      end: BIG - 1,
      announce: BIG,
      file: bigPath,
      options: { sendfile: { stallTimeoutMs: 300 } },
    };
    let client: IncomingMessage | undefined;
    const got = fetchBody(undefined, { pauseAfter: 1, onResponse: (res) => (client = res) });
    // The paused client reads nothing more, not even the end: the server side tells.
    const s = await lastSent(1);
    expect(s.ended).toBe(false); // destroyed, not ended
    expect(s.bytes).toBeLessThan(BIG);
    expect(s.fd()).toBe(-1);
    expect(sendfileCounters.running()).toBe(0);
    client?.destroy();
    expect((await got).complete).toBe(false);
  });
});

describe('StoredFile as an iterable', () => {
  it('reads as an async iterable too, and closes the file at the end', async () => {
    const handle = await open(path, 'r');
    const chunks: Buffer[] = [];
    for await (const c of new StoredFile(handle, 10, 500_009)) chunks.push(c);
    expect(Buffer.concat(chunks).equals(data.subarray(10, 500_010))).toBe(true);
    expect(handle.fd).toBe(-1);
  });
});
