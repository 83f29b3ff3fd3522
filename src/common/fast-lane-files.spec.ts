import { randomBytes } from 'node:crypto';
import { mkdtemp, open as openFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  byLane,
  byNode,
  get,
  HOT,
  open,
  setup,
  sleep,
  splitResponses,
} from '../../test/support/fast-lane-harness';
import { openForLane, sendfileCounters, sendfileSupport } from '../nar/sendfile';
import type { HotFile, HotRoute } from './front-door';

/**
 * The fast lane sending a stored file (HotRoute.file) with sendfile(2), over raw TCP: the head and
 * the whole file, then the next request on the connection; a file it cannot open goes to
 * node:http with everything after it; a client gone or a short file never gets a clean end.
 */

const SIZE = 3 * 1024 * 1024 + 17;
/** More than loopback's socket buffers hold: a client that reads nothing holds the transfer up. */
const HUGE = 48 * 1024 * 1024;
let dir = '';
let path = '';
let hugePath = '';
let content = Buffer.alloc(0);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'narwhal-lane-'));
  path = join(dir, 'big.nar');
  content = randomBytes(SIZE);
  await writeFile(path, content);
  hugePath = join(dir, 'huge.nar');
  await writeFile(hugePath, Buffer.alloc(HUGE, 'h'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

interface Opened {
  opens: number;
  closes: number;
}

/**
 * `/nar/big.nar` as a file of `size` bytes (the file on disk may be shorter); `missing`: it cannot
 * be opened; `huge`: the large file instead.
 */
function fileRoute(
  counts: Opened,
  options: { size?: number; missing?: boolean; huge?: boolean } = {},
): HotRoute {
  const size = options.size ?? (options.huge ? HUGE : SIZE);
  const file = options.huge ? hugePath : path;
  const hot: HotFile = {
    size,
    headers: ['content-type', 'application/x-nix-nar'],
    open: async () => {
      const opened = await openForLane(
        async () => (options.missing ? undefined : openFile(file)),
        size,
        5_000,
      );
      if (!opened) return undefined;
      counts.opens++;
      return {
        send: (fd, signal) => opened.send(fd, signal),
        close: async () => {
          counts.closes++;
          await opened.close();
        },
      };
    },
  };
  return {
    route: '/nar/:name',
    answer: () => undefined,
    file: (url) => (url === '/nar/big.nar' ? hot : undefined),
  };
}

/** Bytes of a response's body in `text` (latin1), after its head. */
const body = (response: string) =>
  Buffer.from(response.slice(response.indexOf('\r\n\r\n') + 4), 'latin1');

/** Waits until `check` holds, up to about two seconds. */
async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await sleep(10);
}

describe.skipIf(!sendfileSupport.available && process.env.CI !== 'true')(
  'FastLane sending stored files',
  () => {
    it('sends the head and the whole file, then answers the next request on the connection', async () => {
      const counts = { opens: 0, closes: 0 };
      const s = await setup(false, [fileRoute(counts)]);
      const accessLine = vi.fn();
      s.door.observe({ accessLine });
      const transfers = sendfileCounters.transfers;
      const c = await open(s.port);
      // Pipelined: a hot narinfo before the file, one after it; all in order on one connection.
      await c.send(get('/hot.narinfo') + get('/nar/big.nar', 'x-request-id: f-1\r\n'));
      await c.send(get('/hot2.narinfo'));
      await until(() => c.received().length > SIZE && c.received().endsWith(HOT.toString()));
      const r = splitResponses(c.received());
      expect(r).toHaveLength(3);
      expect(r.every(byLane)).toBe(true);
      expect(r[0].endsWith(HOT.toString())).toBe(true);
      expect(r[1]).toContain(`\r\ncontent-length: ${SIZE}\r\n`);
      expect(r[1]).toContain('\r\nx-request-id: f-1\r\n');
      expect(body(r[1]).equals(content)).toBe(true);
      expect(r[2].endsWith(HOT.toString())).toBe(true);
      expect(s.seen).toEqual([]);
      expect(sendfileCounters.transfers).toBe(transfers + 1);
      expect(counts).toEqual({ opens: 1, closes: 1 });
      expect(accessLine).toHaveBeenCalledWith(
        'f-1',
        '/nar/big.nar',
        expect.any(Number),
        true,
        'GET',
      );
      expect(s.lane.size).toBe(1);
      c.socket.destroy();
    });

    it('a file it cannot open goes to node:http, with every request after it', async () => {
      const counts = { opens: 0, closes: 0 };
      const s = await setup(false, [fileRoute(counts, { missing: true })]);
      const c = await open(s.port);
      await c.send(get('/hot.narinfo') + get('/nar/big.nar') + get('/hot.narinfo'));
      const r = await c.responses(3);
      expect(byLane(r[0])).toBe(true);
      expect(byNode(r[1]) && r[1].includes('node /nar/big.nar')).toBe(true);
      expect(byNode(r[2])).toBe(true); // node:http has the connection now
      expect(s.seen).toEqual(['GET /nar/big.nar 0', 'GET /hot.narinfo 0']);
      expect(counts.opens).toBe(0);
      c.socket.destroy();
    });

    it('a HEAD, or a GET with a Range, of a file goes to node:http', async () => {
      const s = await setup(false, [fileRoute({ opens: 0, closes: 0 })]);
      for (const request of [
        'HEAD /nar/big.nar HTTP/1.1\r\nHost: x\r\n\r\n',
        get('/nar/big.nar', 'Range: bytes=0-9\r\n'),
      ]) {
        const c = await open(s.port);
        await c.send(request);
        const [r] = await c.responses(1);
        expect(byNode(r)).toBe(true);
        c.socket.destroy();
      }
      expect(s.seen).toEqual(['HEAD /nar/big.nar 0', 'GET /nar/big.nar 0']);
    });

    it('Connection: close ends the connection after the file', async () => {
      const s = await setup(false, [fileRoute({ opens: 0, closes: 0 })]);
      const c = await open(s.port);
      await c.send(get('/nar/big.nar', 'Connection: close\r\n'));
      await until(c.ended);
      expect(c.ended()).toBe(true);
      const [r] = splitResponses(c.received());
      expect(r).toContain('\r\nConnection: close\r\n');
      expect(body(r).equals(content)).toBe(true);
    });

    it('a file shorter than its size cuts the connection: no clean end of a short body', async () => {
      const counts = { opens: 0, closes: 0 };
      const s = await setup(false, [fileRoute(counts, { size: SIZE + 1000 })]);
      const accessLine = vi.fn();
      s.door.observe({ accessLine });
      const c = await open(s.port);
      let closed = false;
      c.socket.on('close', () => (closed = true));
      await c.send(get('/nar/big.nar') + get('/hot.narinfo'));
      await until(() => closed);
      expect(closed).toBe(true);
      const [r, ...more] = splitResponses(c.received());
      expect(r).toContain(`\r\ncontent-length: ${SIZE + 1000}\r\n`);
      expect(body(r).length).toBeLessThan(SIZE + 1000);
      expect(more).toEqual([]); // the next request was never answered
      await until(() => counts.closes === 1);
      expect(counts).toEqual({ opens: 1, closes: 1 });
      expect(accessLine).toHaveBeenCalledWith(
        expect.any(String),
        '/nar/big.nar',
        expect.any(Number),
        false,
        'GET',
      );
    });

    it('a client gone in the middle frees the file and the slot', async () => {
      const counts = { opens: 0, closes: 0 };
      const s = await setup(false, [fileRoute(counts, { huge: true })]);
      const c = await open(s.port);
      c.socket.pause(); // reads nothing: the transfer waits on a full socket
      await c.send(get('/nar/big.nar'));
      await until(() => counts.opens === 1);
      await sleep(50);
      expect(counts.closes).toBe(0);
      c.socket.destroy();
      await until(() => counts.closes === 1);
      expect(counts).toEqual({ opens: 1, closes: 1 });
      expect(sendfileCounters.running()).toBe(0);
    });

    it('shutdown lets a file being sent finish, then closes its connection', async () => {
      const counts = { opens: 0, closes: 0 };
      const s = await setup(false, [fileRoute(counts, { huge: true })]);
      const c = await open(s.port);
      c.socket.pause();
      await c.send(get('/nar/big.nar'));
      await until(() => counts.opens === 1);
      s.door.close();
      s.lane.closeIdle();
      await sleep(50);
      expect(c.socket.destroyed).toBe(false);
      expect(counts.closes).toBe(0);
      c.socket.resume();
      await until(c.ended);
      expect(c.ended()).toBe(true);
      const [r] = splitResponses(c.received());
      expect(body(r).equals(Buffer.alloc(HUGE, 'h'))).toBe(true);
      expect(counts.closes).toBe(1);
    });
  },
);
