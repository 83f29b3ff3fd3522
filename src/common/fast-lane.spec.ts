import { describe, expect, it, vi } from 'vitest';
import {
  byLane,
  byNode,
  get,
  HOT,
  open,
  setup,
  sleep,
  statusLines,
} from '../../test/support/fast-lane-harness';
import { parseHead } from './fast-lane';

/**
 * FastLane in front of a real node:http server, driven over raw TCP (see the harness): what the lane
 * answers, and that everything else reaches node:http whole and in order.
 */

describe('FastLane', () => {
  it('answers hot GETs on a keep-alive connection without node:http, headers and body as the front door', async () => {
    const s = await setup();
    const accessLine = vi.fn();
    const response = vi.fn();
    s.door.observe({ accessLine, response });
    const c = await open(s.port);
    await c.send(get('/hot.narinfo', 'x-request-id: abc-1\r\n'));
    await c.send(get('/hot2.narinfo'));
    const [a, b] = await c.responses(2);
    expect(byLane(a) && byLane(b)).toBe(true);
    expect(s.seen).toEqual([]);
    expect(a).toContain('\r\nx-request-id: abc-1\r\n');
    expect(b).toContain('\r\nx-request-id: fresh-id\r\n');
    expect(a).toContain('\r\ncontent-type: text/x-nix-narinfo\r\n');
    expect(a).toContain(`\r\ncontent-length: ${HOT.length}\r\n`);
    expect(a).toContain('\r\nConnection: keep-alive\r\n');
    expect(a).toMatch(/\r\nDate: \w{3}, \d\d \w{3} \d{4} [\d:]{8} GMT\r\n/);
    expect(a.endsWith(`\r\n\r\n${HOT.toString()}`)).toBe(true);
    expect(accessLine).toHaveBeenCalledWith(
      'abc-1',
      '/hot.narinfo',
      expect.any(Number),
      true,
      'GET',
    );
    expect(response).toHaveBeenCalledWith('/:file', 'GET', 200, expect.any(Number));
    expect(s.lane.size).toBe(1);
    c.socket.destroy();
  });

  it('hands the connection to node:http at the first other request; the rest come in order', async () => {
    const s = await setup();
    const c = await open(s.port);
    await c.send(
      get('/hot.narinfo') +
        get('/cold.narinfo') +
        'POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab',
    );
    await sleep(30);
    await c.send('cde' + get('/hot.narinfo'));
    const r = await c.responses(4);
    expect(r).toHaveLength(4);
    expect(byLane(r[0])).toBe(true);
    expect(r[1]).toContain('node /cold.narinfo');
    expect(r[2]).toContain('node /up');
    // After the hand-over node:http has the connection: the front door inside it answers hot hits.
    expect(byNode(r[3]) && r[3].endsWith(HOT.toString())).toBe(true);
    expect(s.seen).toEqual(['GET /cold.narinfo 0', 'POST /up 5', 'GET /hot.narinfo 0']);
    expect(s.lane.size).toBe(0);
    c.socket.destroy();
  });

  it('hands over a request that has not arrived whole', async () => {
    const s = await setup();
    const c = await open(s.port);
    await c.send('GET /hot.narinfo HTTP/1.1\r\nHo');
    await sleep(30);
    await c.send('st: x\r\n\r\n');
    const [r] = await c.responses(1);
    expect(byNode(r)).toBe(true);
    expect(s.seen).toEqual(['GET /hot.narinfo 0']);
    c.socket.destroy();
  });

  it.each([
    ['HEAD of a route without head', 'HEAD /nar/hot.nar HTTP/1.1\r\nHost: x\r\n\r\n'],
    ['HTTP/1.0', 'GET /hot.narinfo HTTP/1.0\r\nHost: x\r\n\r\n'],
    ['a Range', get('/hot.narinfo', 'Range: bytes=0-3\r\n')],
    ['a Content-Length', get('/hot.narinfo', 'Content-Length: 0\r\n')],
    ['Transfer-Encoding', get('/hot.narinfo', 'Transfer-Encoding: chunked\r\n') + '0\r\n\r\n'],
    ['Expect', get('/hot.narinfo', 'Expect: 100-continue\r\n')],
    ['Connection: upgrade', get('/hot.narinfo', 'Connection: Upgrade\r\nUpgrade: websocket\r\n')],
    ['no Host', 'GET /hot.narinfo HTTP/1.1\r\n\r\n'],
    ['two Hosts', get('/hot.narinfo', 'Host: y\r\n')],
    ['two Authorizations', get('/hot.narinfo', 'Authorization: a\r\nAuthorization: b\r\n')],
    ['a folded header line', get('/hot.narinfo', 'X-A: 1\r\n  2\r\n')],
    ['a bad header name', get('/hot.narinfo', 'X A: 1\r\n')],
    ['a control byte in a value', get('/hot.narinfo', 'X-A: a\x01b\r\n')],
    ['a non-ASCII byte in a value', get('/hot.narinfo', 'X-A: a\xffb\r\n')],
    ['an absolute URL', 'GET http://x/hot.narinfo HTTP/1.1\r\nHost: x\r\n\r\n'],
    ['a lower-case method', 'get /hot.narinfo HTTP/1.1\r\nHost: x\r\n\r\n'],
    ['bare LF line ends', 'GET /hot.narinfo HTTP/1.1\nHost: x\n\n'],
  ])('leaves a request with %s to node:http', async (_what, request) => {
    const s = await setup();
    const c = await open(s.port);
    await c.send(request);
    const [r] = await c.responses(1);
    expect(r).toBeDefined();
    expect(byLane(r)).toBe(false);
    expect(s.lane.size).toBe(0);
    c.socket.destroy();
  });

  it("answers a HEAD with the GET answer's headers and length, and no body", async () => {
    const s = await setup();
    const n = await open(s.port);
    await n.send(get('/nar/hot.nar'));
    expect(byLane((await n.responses(1))[0])).toBe(true); // the NAR route's GET is the lane's
    n.socket.destroy();
    const methods: (string | undefined)[] = [];
    s.door.observe({ accessLine: (_id, _url, _ms, _done, method) => methods.push(method) });
    const c = await open(s.port);
    await c.send('HEAD /hot.narinfo HTTP/1.1\r\nHost: x\r\n\r\n' + get('/hot.narinfo'));
    const [head, body] = await c.responses(2);
    expect(byLane(head) && byLane(body)).toBe(true);
    expect(head).toContain(`\r\ncontent-length: ${HOT.length}\r\n`);
    expect(head.endsWith('\r\n\r\n')).toBe(true);
    expect(body.endsWith(HOT.toString())).toBe(true);
    expect(methods).toEqual(['HEAD', 'GET']);
    c.socket.destroy();
  });

  it('closes the connection after answering a request that asks for it', async () => {
    const s = await setup();
    const c = await open(s.port);
    await c.send(get('/hot.narinfo', 'Connection: close\r\n'));
    const [r] = await c.responses(1);
    expect(byLane(r)).toBe(true);
    expect(r).toContain('\r\nConnection: close\r\n');
    for (let i = 0; i < 100 && !c.ended(); i++) await sleep(10);
    expect(c.ended()).toBe(true);
  });

  it('leaves a request the read-token check does not admit to node:http', async () => {
    const s = await setup(true);
    s.door.checkReads((authorization) => authorization === 'Bearer yes');
    const c = await open(s.port);
    await c.send(get('/hot.narinfo', 'Authorization: Bearer yes\r\n'));
    await c.send(get('/hot.narinfo', 'Authorization: Bearer no\r\n'));
    const r = await c.responses(2);
    expect(byLane(r[0])).toBe(true);
    expect(r[1]).toMatch(/^HTTP\/1\.1 401/);
    c.socket.destroy();
  });

  it('stops reading a connection whose client takes no answers, until they drain', async () => {
    const s = await setup();
    const c = await open(s.port);
    c.socket.pause(); // the client reads nothing
    // 64 MiB of answers asked for at once: far past what the socket buffers hold.
    c.socket.write(get('/big.narinfo').repeat(1024));
    const server = s.sockets[0];
    for (let i = 0; i < 200 && !server.isPaused(); i++) await sleep(10);
    expect(server.isPaused()).toBe(true);
    expect(server.writableLength).toBeLessThan(16 * 1024 * 1024); // it stopped answering early
    c.socket.resume();
    for (let i = 0; i < 1000 && statusLines(c.received()).length < 1024; i++) await sleep(10);
    expect(statusLines(c.received())).toHaveLength(1024);
    c.socket.destroy();
  });

  it('closes idle connections when the server closes, and sends new ones to node:http', async () => {
    const s = await setup();
    const c = await open(s.port);
    await c.send(get('/hot.narinfo'));
    await c.responses(1);
    s.door.close();
    s.lane.closeIdle();
    for (let i = 0; i < 100 && !c.socket.destroyed && !c.ended(); i++) await sleep(10);
    expect(c.ended() || c.socket.destroyed).toBe(true);
    const d = await open(s.port);
    await d.send(get('/hot.narinfo'));
    const [r] = await d.responses(1);
    expect(byNode(r)).toBe(true); // the front door answers nothing while closing
    d.socket.destroy();
  });

  it('closes a connection idle for longer than the keep-alive timeout', async () => {
    const s = await setup();
    s.server.keepAliveTimeout = 200;
    const c = await open(s.port);
    await c.send(get('/hot.narinfo'));
    await c.responses(1);
    for (let i = 0; i < 100 && !c.ended(); i++) await sleep(10);
    expect(c.ended()).toBe(true);
  });
});

describe('parseHead', () => {
  it('reads the URL, the Authorization, the first x-request-id and Connection: close', () => {
    expect(
      parseHead(
        'GET /a.narinfo HTTP/1.1\r\nhost: x\r\nAuthorization:  Bearer t \r\n' +
          'X-Request-Id: one\r\nx-request-id: two\r\nConnection: keep-alive, close',
      ),
    ).toEqual({
      method: 'GET',
      url: '/a.narinfo',
      authorization: 'Bearer t',
      requestId: 'one',
      close: true,
    });
  });

  it('takes an empty header value', () => {
    expect(parseHead('GET / HTTP/1.1\r\nHost: x\r\nX-Empty:')).toMatchObject({ url: '/' });
  });
});
