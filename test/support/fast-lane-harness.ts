import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { afterEach } from 'vitest';
import { FastLane } from '../../src/common/fast-lane';
import { FrontDoor, type HotAnswer, type HotRoute } from '../../src/common/front-door';

/**
 * FastLane in front of a real node:http server, driven over raw TCP (the fast-lane specs). The
 * server's own handler answers with `x-by: node` (and the front door's answer, for hot hits it gets
 * after a hand-over); it records what it was asked.
 */

export const HOT = Buffer.from('StorePath: /nix/store/x\n');
const BIG = Buffer.alloc(64 * 1024, 'n');
const route = {
  route: '/:file',
  head: true,
  answer: (url: string): HotAnswer | undefined =>
    url === '/hot.narinfo' || url === '/hot2.narinfo'
      ? { body: HOT, headers: ['content-type', 'text/x-nix-narinfo'] }
      : url === '/big.narinfo'
        ? { body: BIG, headers: ['content-type', 'text/x-nix-narinfo'] }
        : undefined,
};

/** A route whose HEAD the lane must leave alone (no `head`), as the NAR route. */
const narRoute = {
  route: '/nar/:name',
  answer: (url: string): HotAnswer | undefined =>
    url === '/nar/hot.nar' ? { body: HOT, headers: ['content-type', 'x'] } : undefined,
};

export interface Setup {
  server: Server;
  door: FrontDoor;
  lane: FastLane;
  port: number;
  /** Requests node:http's handler got, as `METHOD url body-length`. */
  seen: string[];
  /** The server side of each connection, in order. */
  sockets: Socket[];
}

let current: Setup | undefined;
afterEach(async () => {
  if (!current) return;
  current.lane.closeIdle();
  current.server.closeAllConnections();
  await new Promise((done) => current?.server.close(done));
  current = undefined;
});

/** A FrontDoor with the routes above (and `extra`), a FastLane in front of a node:http server. */
export async function setup(requireReadToken = false, extra: HotRoute[] = []): Promise<Setup> {
  const seen: string[] = [];
  const door = new FrontDoor(
    requireReadToken,
    () => 'node-id',
    (h) => h ?? 'fresh-id',
  );
  door.addRoute(route);
  door.addRoute(narRoute);
  for (const r of extra) door.addRoute(r);
  const server = createServer((req, res) => {
    let bytes = 0;
    req.on('data', (c: Buffer) => (bytes += c.length));
    req.on('end', () => {
      seen.push(`${req.method} ${req.url} ${bytes}`);
      res.setHeader('x-by', 'node');
      if (door.answer(req, res)) return;
      res.writeHead(req.headers.authorization === 'Bearer no' ? 401 : 299).end(`node ${req.url}`);
    });
  });
  door.attach(server);
  const lane = new FastLane(door, server);
  lane.install();
  const sockets: Socket[] = [];
  server.on('connection', (s: Socket) => sockets.push(s));
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  current = {
    server,
    door,
    lane,
    port: (server.address() as AddressInfo).port,
    seen,
    sockets,
  };
  return current;
}

/** One raw connection: write bytes, read what comes back. */
export async function open(port: number) {
  const socket = connect(port, '127.0.0.1');
  await new Promise((done) => socket.once('connect', done));
  let received = '';
  let ended = false;
  socket.on('data', (d: Buffer) => (received += d.toString('latin1')));
  socket.on('end', () => (ended = true));
  socket.on('error', () => undefined);
  return {
    socket,
    send: (text: string) => new Promise<void>((done) => socket.write(text, () => done())),
    /** Waits until `n` responses (status lines) have arrived, or a second has passed. */
    async responses(n: number): Promise<string[]> {
      for (let i = 0; i < 100 && statusLines(received).length < n; i++) await sleep(10);
      return splitResponses(received);
    },
    ended: () => ended,
    received: () => received,
  };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export const statusLines = (text: string) => text.match(/HTTP\/1\.1 \d{3}/g) ?? [];
/** The responses in `text`, one string each (head and body). */
export function splitResponses(text: string): string[] {
  return text.split(/(?=HTTP\/1\.1 \d{3} )/).filter(Boolean);
}

export const get = (path: string, extra = '') => `GET ${path} HTTP/1.1\r\nHost: x\r\n${extra}\r\n`;
export const byLane = (r: string) => r.startsWith('HTTP/1.1 200') && !/\r\nx-by: node\r\n/i.test(r);
export const byNode = (r: string) => /\r\nx-by: node\r\n/i.test(r);
