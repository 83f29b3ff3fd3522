import { mkdtemp, rm } from 'node:fs/promises';
import {
  createServer,
  get,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  chunks,
  Feed,
  ownCopy,
  rawSample,
  settle,
  waitFor,
  checkOf,
} from '../../test/support/nar-spool-kit';
import { DownloadFailedError } from '../common/errors';
import { SpoolArea } from '../storage/spool-area';
import { NarSpool } from './nar-spool';
import { sendChunks } from './send-chunks';
import { sendfileCounters, sendfileSupport } from './sendfile';
import type { StoredFileOptions } from './stored-file';

// A reader that writes itself to a real HTTP response (DirectBody.sendTo), as the NAR controller
// sends a running download, against a real client.

let spoolDir: string;
let server: Server;
let base: string;
/** What the next request is answered with. */
let answer: (res: ServerResponse) => void = (res) => res.end();

beforeAll(async () => {
  server = createServer((_req, res) => answer(res));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

beforeEach(async () => {
  spoolDir = await mkdtemp(join(tmpdir(), 'narwhal-send-'));
});

afterEach(async () => {
  await rm(spoolDir, { recursive: true, force: true });
});

interface Client {
  res?: IncomingMessage;
  body(): Buffer;
  bytes: number;
  /** Set once the response closed: whether it ended cleanly. */
  finished?: { complete: boolean };
}

/** A GET that collects the body (`pauseAt`: stops reading once it has that many bytes). */
function fetchBody(pauseAt?: number): Client {
  const got: Buffer[] = [];
  const client: Client = { body: () => Buffer.concat(got), bytes: 0 };
  get(base, (res) => {
    client.res = res;
    res.on('data', (c: Buffer) => {
      got.push(c);
      client.bytes += c.length;
      if (pauseAt !== undefined && client.bytes >= pauseAt) {
        pauseAt = undefined; // once
        res.pause();
      }
    });
    res.on('error', () => undefined);
    res.on('close', () => (client.finished = { complete: res.complete }));
  }).on('error', () => (client.finished ??= { complete: false }));
  return client;
}

/** A download of a random NAR of `size` bytes into a new spool, fed by the test. */
function startDownload(size: number) {
  const raw = rawSample(size);
  const feed = new Feed();
  const spool = new NarSpool(raw.key, new SpoolArea(spoolDir), raw.file.length);
  const receiving = spool.receive(feed, checkOf(spool, raw.expect));
  return { raw, feed, spool, receiving };
}

/** The server's side of the last request answered by answerWith. */
let lastResponse: ServerResponse | undefined;

/** Answers the next request with a reader of `spool` sent by sendTo; resolves with what it sent. */
function answerWith(
  spool: NarSpool,
  length: number,
  range?: { start: number; end: number },
  options?: StoredFileOptions,
) {
  let resolveSent!: (bytes: number) => void;
  const sent = new Promise<number>((r) => (resolveSent = r));
  answer = (res) => {
    lastResponse = res;
    res.writeHead(200, { 'content-length': length });
    void spool.createReader(range, options).sendTo(res).then(resolveSent);
  };
  return sent;
}

describe('NarSpool reader sent to a response', () => {
  it('sends every byte as the download streams, and ends cleanly only once verified', async () => {
    const raw = rawSample(3 * 1024 * 1024 + 11);
    const feed = new Feed();
    const spool = new NarSpool(raw.key, new SpoolArea(spoolDir), raw.file.length);
    const receiving = spool.receive(feed, checkOf(spool, raw.expect));
    const parts = chunks(raw.file, 65_536).map(ownCopy);
    for (const p of parts.slice(0, 20)) feed.push(p);
    await waitFor(() => spool.written === 20 * 65_536, 'a part written');
    const sent = answerWith(spool, raw.file.length);
    const client = fetchBody();
    for (const p of parts.slice(20)) feed.push(p);
    await waitFor(() => client.bytes === raw.file.length - 1, 'all but the last byte sent');
    await settle();
    expect(client.finished).toBeUndefined(); // not verified yet: the last byte waits
    feed.end();
    await receiving;
    await waitFor(() => client.finished !== undefined, 'response ends');
    expect(client.finished).toEqual({ complete: true });
    expect(client.body().equals(raw.file)).toBe(true);
    expect(await sent).toBe(raw.file.length);
    expect(spool.readerCount).toBe(0);
    await spool.finishWriting(false);
  });

  it('sends exactly a byte range', async () => {
    const raw = rawSample(200_000);
    const feed = new Feed();
    const spool = new NarSpool(raw.key, new SpoolArea(spoolDir), raw.file.length);
    const receiving = spool.receive(feed, checkOf(spool, raw.expect));
    const sent = answerWith(spool, 1000, { start: 5000, end: 5999 });
    const client = fetchBody();
    for (const p of chunks(raw.file, 4096)) feed.push(p);
    feed.end();
    await receiving;
    await waitFor(() => client.finished !== undefined, 'response ends');
    expect(client.finished).toEqual({ complete: true });
    expect(client.body().equals(raw.file.subarray(5000, 6000))).toBe(true);
    expect(await sent).toBe(1000);
    await spool.finishWriting(false);
  });

  it('breaks the response at once when the download fails, also for a client that stopped reading', async () => {
    const raw = rawSample(8 * 1024 * 1024);
    const feed = new Feed();
    const spool = new NarSpool(raw.key, new SpoolArea(spoolDir), raw.file.length);
    const receiving = spool.receive(feed, checkOf(spool, raw.expect));
    receiving.catch(() => undefined);
    void answerWith(spool, raw.file.length);
    const client = fetchBody(64 * 1024); // reads a little, then leaves the rest in the socket
    const parts = chunks(raw.file, 65_536);
    for (const p of parts.slice(0, -1)) feed.push(p);
    await waitFor(() => spool.written === raw.file.length - 65_536, 'all but the last chunk');
    await waitFor(() => client.bytes >= 64 * 1024, 'client paused');
    await settle();
    expect(lastResponse!.destroyed).toBe(false); // waiting for the client to read on
    spool.fail(new DownloadFailedError('upstream broke'));
    expect(lastResponse!.destroyed).toBe(true); // at once, not when the client reads again
    await waitFor(() => spool.readerCount === 0, 'reader released');
    client.res!.resume();
    await waitFor(() => client.finished !== undefined, 'client sees the end');
    expect(client.finished).toEqual({ complete: false });
    expect(client.bytes).toBeLessThan(raw.file.length);
    feed.end();
    await expect(receiving).rejects.toThrow(DownloadFailedError);
    await spool.finishWriting(true);
  });

  it('releases the reader when the client goes away while it waits for the download', async () => {
    const raw = rawSample(100_000);
    const feed = new Feed();
    const spool = new NarSpool(raw.key, new SpoolArea(spoolDir), raw.file.length);
    const receiving = spool.receive(feed, checkOf(spool, raw.expect));
    const sent = answerWith(spool, raw.file.length);
    const client = fetchBody();
    feed.push(raw.file.subarray(0, 10_000));
    await waitFor(() => client.bytes === 9_999, 'first bytes sent (the last one waits)');
    expect(spool.readerCount).toBe(1);
    client.res!.destroy();
    // Nothing more arrives from the upstream, yet the reader lets go of the spool.
    expect(await sent).toBe(9_999);
    expect(spool.readerCount).toBe(0);
    feed.push(raw.file.subarray(10_000));
    feed.end();
    await receiving;
    await spool.finishWriting(false);
  });
});

describe.skipIf(!sendfileSupport.available && process.env.CI !== 'true')(
  'NarSpool reader sent to a response, with sendfile',
  () => {
    const withSendfile: StoredFileOptions = { sendfile: { stallTimeoutMs: 5_000 } };

    /**
     * A download of `size` bytes (or `range` of it) to a client that read 64 KiB and stopped while
     * the whole NAR arrived and was verified, then reads on: most of it is left for sendfile.
     */
    async function verifiedBehind(size: number, range?: { start: number; end: number }) {
      const { raw, feed, spool, receiving } = startDownload(size);
      const length = range ? range.end - range.start + 1 : raw.file.length;
      const sent = answerWith(spool, length, range, withSendfile);
      const client = fetchBody(64 * 1024);
      const transfers = sendfileCounters.transfers;
      for (const p of chunks(raw.file, 1024 * 1024).map(ownCopy)) feed.push(p);
      feed.end();
      await receiving;
      client.res!.resume();
      return { raw, spool, client, sent, transfers };
    }

    it('sends what is left by sendfile once the download is verified, never before', async () => {
      const { raw, feed, spool, receiving } = startDownload(16 * 1024 * 1024 + 3);
      const sent = answerWith(spool, raw.file.length, undefined, withSendfile);
      const client = fetchBody(256 * 1024); // falls behind: most is left when verified
      const transfers = sendfileCounters.transfers;
      for (const p of chunks(raw.file, 1024 * 1024).map(ownCopy)) feed.push(p);
      await waitFor(() => spool.written === raw.file.length, 'all written');
      await settle();
      expect(sendfileCounters.transfers).toBe(transfers); // not verified yet
      feed.end();
      await receiving;
      client.res!.resume();
      await waitFor(() => client.finished !== undefined, 'response ends');
      expect(client.finished).toEqual({ complete: true });
      expect(client.body().equals(raw.file)).toBe(true);
      expect(await sent).toBe(raw.file.length);
      expect(sendfileCounters.transfers).toBe(transfers + 1);
      expect(spool.readerCount).toBe(0);
      expect(sendfileCounters.running()).toBe(0);
      await spool.finishWriting(false);
    });

    it('a client that joins once the download is verified gets the head first, then sendfile', async () => {
      // The spool stays open after verification while the NAR is committed (an S3 upload takes a
      // while): a reader made then has nothing to wait for. Its head must still lead the body
      // (sendfile's bytes written before node:http's first write would come before the status line).
      const { raw, feed, spool, receiving } = startDownload(8 * 1024 * 1024 + 5);
      for (const p of chunks(raw.file, 1024 * 1024).map(ownCopy)) feed.push(p);
      feed.end();
      await receiving;
      const transfers = sendfileCounters.transfers;
      const sent = answerWith(spool, raw.file.length, undefined, withSendfile);
      const client = fetchBody();
      await waitFor(() => client.finished !== undefined, 'response ends');
      expect(client.res?.statusCode).toBe(200);
      expect(client.finished).toEqual({ complete: true });
      expect(client.body().equals(raw.file)).toBe(true);
      expect(await sent).toBe(raw.file.length);
      expect(sendfileCounters.transfers).toBe(transfers + 1); // all but the first chunk
      expect(spool.readerCount).toBe(0);
      await spool.finishWriting(false);
    });

    it('a response without a length (chunked) never goes out by sendfile', async () => {
      const { raw, feed, spool, receiving } = startDownload(4 * 1024 * 1024);
      for (const p of chunks(raw.file, 1024 * 1024).map(ownCopy)) feed.push(p);
      feed.end();
      await receiving;
      const transfers = sendfileCounters.transfers;
      let resolveSent!: (bytes: number) => void;
      const sent = new Promise<number>((r) => (resolveSent = r));
      answer = (res) => {
        res.writeHead(200); // no content-length: node:http frames the body in chunks
        void spool.createReader(undefined, withSendfile).sendTo(res).then(resolveSent);
      };
      const client = fetchBody();
      await waitFor(() => client.finished !== undefined, 'response ends');
      expect(client.finished).toEqual({ complete: true });
      expect(client.body().equals(raw.file)).toBe(true);
      expect(await sent).toBe(raw.file.length);
      expect(sendfileCounters.transfers).toBe(transfers);
      await spool.finishWriting(false);
    });

    it('sends exactly a byte range', async () => {
      const range = { start: 100_000, end: 14_100_000 };
      const { raw, spool, client, sent, transfers } = await verifiedBehind(16 * 1024 * 1024, range);
      await waitFor(() => client.finished !== undefined, 'response ends');
      expect(client.finished).toEqual({ complete: true });
      expect(client.body().equals(raw.file.subarray(range.start, range.end + 1))).toBe(true);
      expect(await sent).toBe(range.end - range.start + 1);
      expect(sendfileCounters.transfers).toBe(transfers + 1);
      await spool.finishWriting(false);
    });

    it('a client gone during the transfer releases the reader and the slot', async () => {
      const { raw, spool, client, sent, transfers } = await verifiedBehind(40 * 1024 * 1024);
      await waitFor(() => sendfileCounters.transfers === transfers + 1, 'sendfile started');
      client.res!.destroy();
      await sent;
      await waitFor(() => spool.readerCount === 0, 'reader released');
      expect(sendfileCounters.running()).toBe(0);
      expect(client.bytes).toBeLessThan(raw.file.length);
      await spool.finishWriting(false);
    });
  },
);

describe('NarSpool reader ready()', () => {
  it('resolves once a first byte can be sent', async () => {
    const raw = rawSample(100_000);
    const feed = new Feed();
    const spool = new NarSpool(raw.key, new SpoolArea(spoolDir), raw.file.length);
    const receiving = spool.receive(feed, checkOf(spool, raw.expect));
    const reader = spool.createReader();
    let ready = false;
    void reader.ready().then(() => (ready = true));
    await settle();
    expect(ready).toBe(false); // nothing arrived yet
    feed.push(raw.file.subarray(0, 1)); // one byte: still held back until verification
    await waitFor(() => spool.written === 1, 'first byte written');
    await settle();
    expect(ready).toBe(false);
    feed.push(raw.file.subarray(1, 5000));
    await waitFor(() => ready, 'ready');
    reader.destroy();
    feed.push(raw.file.subarray(5000));
    feed.end();
    await receiving;
    await spool.finishWriting(false);
  });

  it('rejects with the failure when the download fails before its first byte, and releases the reader', async () => {
    const spool = new NarSpool('x.nar.xz', new SpoolArea(spoolDir), 1000);
    const reader = spool.createReader();
    const ready = reader.ready();
    expect(spool.readerCount).toBe(1);
    spool.fail(new DownloadFailedError('no space left'));
    await expect(ready).rejects.toThrow('no space left');
    expect(spool.readerCount).toBe(0);
    await spool.finishWriting(true);
  });
});

describe('sendChunks', () => {
  it('fills the same two buffers in turn, however many chunks it sends', async () => {
    const total = 40;
    const seen = new Set<Buffer>();
    let done = 0;
    answer = (res) => {
      res.writeHead(200, { 'content-length': total * 1000 });
      let i = 0;
      void sendChunks(
        res,
        [1000, 1000],
        (buffer) => {
          seen.add(buffer);
          if (i === total) return Promise.resolve(null);
          buffer.fill(i++ % 256);
          return Promise.resolve(buffer);
        },
        () => void done++,
      );
    };
    const client = fetchBody();
    await waitFor(() => client.finished !== undefined, 'response ends');
    expect(client.finished).toEqual({ complete: true });
    const body = client.body();
    expect(body.length).toBe(total * 1000);
    for (let i = 0; i < total; i++) expect(body[i * 1000 + 999]).toBe(i % 256);
    expect(seen.size).toBe(2);
    expect(done).toBe(1);
  });
});
