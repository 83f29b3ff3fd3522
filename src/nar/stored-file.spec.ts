import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { createServer, get, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StoredFile } from './stored-file';

/** StoredFile against a real HTTP server and client, on a real file. */

let dir: string;
let path: string;
const data = randomBytes(1024 * 1024 + 12_345); // two whole chunks and a part
let server: Server;
let base: string;
/** What each request's sendTo resolved with, and the handle it used. */
const sent: { bytes: number; fd: () => number }[] = [];
/** How the next request is answered: the range to send and the length to announce. */
let plan: { start: number; end: number; announce: number; file?: string } = {
  start: 0,
  end: 0,
  announce: 0,
};
/** A file larger than what loopback socket buffers hold, for a client that leaves mid-way. */
let bigPath: string;
const BIG = 32 * 1024 * 1024;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stored-file-'));
  path = join(dir, 'x.nar');
  await writeFile(path, data);
  bigPath = join(dir, 'big.nar');
  await writeFile(bigPath, Buffer.alloc(BIG, 7));
  server = createServer((_req, res) => {
    void (async () => {
      const { start, end, announce, file } = plan;
      const handle = await open(file ?? path, 'r');
      res.writeHead(200, { 'content-length': announce });
      const bytes = await new StoredFile(handle, start, end).sendTo(res);
      sent.push({ bytes, fd: () => handle.fd });
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
): Promise<{ body: Buffer; complete: boolean; error?: Error }> {
  return new Promise((resolve) => {
    get(`${base}/`, (res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      let got = 0;
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        got += c.length;
        if (abortAfter !== undefined && got >= abortAfter) res.destroy();
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

describe('StoredFile', () => {
  it('sends the whole file, then closes it', async () => {
    plan = { start: 0, end: data.length - 1, announce: data.length };
    const got = await fetchBody();
    expect(got.complete).toBe(true);
    expect(got.body.equals(data)).toBe(true);
    const s = await lastSent(1);
    expect(s.bytes).toBe(data.length);
    expect(s.fd()).toBe(-1); // closed
  });

  it('sends a byte range', async () => {
    plan = { start: 300_000, end: 700_000, announce: 400_001 };
    const got = await fetchBody();
    expect(got.complete).toBe(true);
    expect(got.body.equals(data.subarray(300_000, 700_001))).toBe(true);
    expect((await lastSent(2)).bytes).toBe(400_001);
  });

  it('breaks the body (never a clean end) when the file is shorter than announced', async () => {
    plan = { start: 0, end: data.length + 999, announce: data.length + 1000 };
    const got = await fetchBody();
    expect(got.complete).toBe(false);
    expect(got.body.length).toBe(data.length);
    const s = await lastSent(3);
    expect(s.fd()).toBe(-1);
  });

  it('stops and closes the file when the client goes away', async () => {
    plan = { start: 0, end: BIG - 1, announce: BIG, file: bigPath };
    const got = await fetchBody(100_000);
    expect(got.complete).toBe(false);
    const s = await lastSent(4);
    expect(s.bytes).toBeLessThan(BIG);
    expect(s.fd()).toBe(-1);
  });

  it('reads as an async iterable too, and closes the file at the end', async () => {
    const handle = await open(path, 'r');
    const chunks: Buffer[] = [];
    for await (const c of new StoredFile(handle, 10, 500_009)) chunks.push(c);
    expect(Buffer.concat(chunks).equals(data.subarray(10, 500_010))).toBe(true);
    expect(handle.fd).toBe(-1);
  });
});
