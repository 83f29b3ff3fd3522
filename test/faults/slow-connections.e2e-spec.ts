import { connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { beforeAll, expect, it } from 'vitest';
import { latencyFigures, printFigures, scaled, timedGets } from '../support/figures';
import { httpGet } from '../support/http-client';
import { useNarwhalProcess } from '../support/narwhal-process';
import { mib } from '../support/proc-memory';
import { makeKey } from '../support/signing-keys';
import { makeStorePath, type StorePathFixture } from '../support/store-paths';
import { eventually } from '../support/wait';

/**
 * Idle and slowloris connections next to a normal client: hundreds of TCP connections that send
 * nothing, and connections that send a request's headers one byte at a time and never finish, are
 * held open to a narwhal process while a normal client asks for a narinfo that narwhal has. The
 * normal client must get its 200s; its latency with and without them is printed, and how many of
 * the held connections narwhal closed meanwhile (Node's headersTimeout, 60 s by default, applies
 * to a request whose headers never end; nothing closes a connection that never sends a byte).
 */

const IDLE = scaled(700, 2000);
const SLOWLORIS = scaled(100, 500);
const REQUESTS = scaled(500, 2000);
/** How long the held connections stay before the normal client's second measurement. */
const HOLD_MS = scaled(3_000, 100_000);
/** The slowloris clients send one byte each this often. */
const DRIP_MS = 500;

const key = makeKey('up-a-1');
const t = useNarwhalProcess(key);
let f: StorePathFixture;

beforeAll(async () => {
  f = await makeStorePath([key]);
  t.upstream.publish(f);
  expect((await httpGet(`${t.narwhal.url}/${f.hash}.narinfo`)).status).toBe(200);
});

/** A connection held open by the test, and whether narwhal has closed it. */
interface Held {
  socket: Socket;
  closed: boolean;
  /** Seconds from the connection to narwhal closing it. */
  closedAfterS?: number;
  /** The first bytes narwhal sent, if any (e.g. a 408). */
  answer: string;
}

async function hold(count: number, onConnect: (s: Socket) => void): Promise<Held[]> {
  const held: Held[] = [];
  // In batches, so that the accept backlog is never what refuses them.
  for (let i = 0; i < count; i += 50) {
    const batch = Array.from({ length: Math.min(50, count - i) }, () => {
      const h: Held = { socket: connect(t.narwhal.port, '127.0.0.1'), closed: false, answer: '' };
      const openedAt = performance.now();
      h.socket.on('error', () => undefined);
      h.socket.on('data', (d: Buffer) => {
        if (h.answer.length < 100) h.answer += d.toString('latin1');
      });
      h.socket.once('close', () => {
        h.closed = true;
        h.closedAfterS = (performance.now() - openedAt) / 1000;
      });
      held.push(h);
      return new Promise<void>((done) =>
        h.socket.once('connect', () => {
          onConnect(h.socket);
          done();
        }),
      );
    });
    await Promise.all(batch);
  }
  return held;
}

it(`serves a normal client next to ${IDLE} idle and ${SLOWLORIS} slowloris connections`, async () => {
  const narwhal = t.narwhal;
  const url = `${narwhal.url}/${f.hash}.narinfo`;
  const alone = await timedGets(url, REQUESTS, 4);
  const memBefore = await narwhal.memory();

  const idle = await hold(IDLE, () => undefined);
  const slow = await hold(SLOWLORIS, (s) => s.write('GET /nix-cache-info HTTP/1.1\r\n'));
  const header = Buffer.from('X-Slow: 1\r\n');
  let dripped = 0;
  const drip = setInterval(() => {
    for (const h of slow)
      if (!h.closed)
        h.socket.write(header.subarray(dripped % header.length, (dripped % header.length) + 1));
    dripped++;
  }, DRIP_MS);
  try {
    await sleep(HOLD_MS);
    const next = await timedGets(url, REQUESTS, 4);
    const memWith = await narwhal.memory();
    /** `count (after min–max s)` of the connections narwhal closed. */
    const closedBy = (held: Held[]) => {
      const after = held.filter((h) => h.closed).map((h) => h.closedAfterS ?? NaN);
      if (after.length === 0) return '0';
      return `${after.length} (after ${Math.min(...after).toFixed(0)}–${Math.max(...after).toFixed(0)} s)`;
    };
    const answers = new Set(
      slow.filter((h) => h.answer !== '').map((h) => h.answer.split('\r\n')[0]),
    );
    printFigures('idle and slowloris connections', {
      idle: IDLE,
      slowloris: SLOWLORIS,
      'held s': HOLD_MS / 1000,
      ...latencyFigures(alone, 'alone '),
      ...latencyFigures(next, 'next to them '),
      'idle closed by narwhal': closedBy(idle),
      'slowloris closed by narwhal': closedBy(slow),
      'slowloris answers': JSON.stringify([...answers]),
      'RSS before MiB': mib(memBefore.rssBytes),
      'RSS with them MiB': mib(memWith.rssBytes),
    });
    expect(alone.statuses).toEqual({ 200: REQUESTS });
    expect(next.statuses).toEqual({ 200: REQUESTS });
  } finally {
    clearInterval(drip);
    for (const h of [...idle, ...slow]) h.socket.destroy();
  }
  expect(narwhal.exitStatus(), narwhal.logs().slice(-4000)).toBeNull();
  await eventually(
    async () => (await httpGet(`${narwhal.url}/nix-cache-info`)).status === 200,
    10_000,
    'narwhal answers once the connections are gone',
  );
});
