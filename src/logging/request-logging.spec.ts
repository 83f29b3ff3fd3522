import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { get } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PinoNestLogger } from './nest-logger';
import { createPinoLogger } from './pino-logger';
import { installRequestLogging, requestIdFor } from './request-logging';

describe('requestIdFor', () => {
  const req = (id?: string | string[]) => ({
    headers: id === undefined ? {} : { 'x-request-id': id },
  });

  it('keeps a sane incoming x-request-id', () => {
    for (const id of ['abc', 'lb-1:2/3+4=5@6.7_8', 'a'.repeat(128)])
      expect(requestIdFor(req(id) as never)).toBe(id);
  });

  it('makes a UUID when there is none or it is not a sane token', () => {
    for (const id of [undefined, '', 'a b', 'a'.repeat(129), 'x\u00e9', '<script>'])
      expect(requestIdFor(req(id) as never)).toMatch(/^[0-9a-f-]{36}$/);
  });
});

describe('installRequestLogging', () => {
  const lines: Record<string, unknown>[] = [];
  let app: FastifyInstance | undefined;
  let base: string;

  beforeAll(async () => {
    const pino = createPinoLogger({
      level: 'debug',
      pretty: false,
      destination: {
        write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>),
      },
    });
    const nest = new PinoNestLogger(pino);
    const loggerInstance: FastifyBaseLogger = pino;
    const server = Fastify({
      loggerInstance,
      genReqId: requestIdFor,
      logController: new LogController({ disableRequestLogging: true }),
    });
    installRequestLogging(server);
    server.get('/ok', async () => {
      await new Promise((done) => setTimeout(done, 2));
      nest.log('in the handler', 'test');
      return 'ok';
    });
    server.post('/body', (request) => {
      nest.log(`got ${JSON.stringify(request.body)}`, 'test');
      return Promise.resolve('ok');
    });
    server.get('/cut', (_request, reply) => {
      reply.raw.writeHead(200, { 'content-length': '1000' });
      reply.raw.write('partial');
      setTimeout(() => reply.raw.destroy(), 10);
    });
    server.get('/healthz', () => Promise.resolve('ok'));
    server.get('/_narwhal/status.json', () => Promise.resolve('{}'));
    await server.listen({ port: 0, host: '127.0.0.1' });
    base = `http://127.0.0.1:${(server.server.address() as AddressInfo).port}`;
    app = server;
  });

  afterAll(async () => {
    await app?.close();
  });

  const byReq = (id: string) => lines.filter((l) => l.reqId === id);

  /** Waits until the access line of request `id` has been written. */
  async function accessLine(id: string): Promise<void> {
    const deadline = Date.now() + 2000;
    while (!byReq(id).some((l) => /^(request completed|response aborted)$/.test(String(l.msg)))) {
      if (Date.now() > deadline) throw new Error(`no access line for ${id}`);
      await new Promise((done) => setTimeout(done, 5));
    }
  }

  it('echoes the request id and puts it on the handler’s lines and on one access line', async () => {
    const res = await fetch(`${base}/ok`, { headers: { 'x-request-id': 'unit-1' } });
    expect(await res.text()).toBe('ok');
    expect(res.headers.get('x-request-id')).toBe('unit-1');
    await accessLine('unit-1');
    expect(byReq('unit-1').map((l) => l.msg)).toEqual(['in the handler', 'request completed']);
    expect(byReq('unit-1')[1]).toMatchObject({
      level: 'info',
      method: 'GET',
      url: '/ok',
      statusCode: 200,
    });
  });

  it('keeps the request id across body parsing', async () => {
    const res = await fetch(`${base}/body`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': 'unit-2' },
      body: JSON.stringify({ a: 1 }),
    });
    expect(res.status).toBe(200);
    await accessLine('unit-2');
    expect(byReq('unit-2')[0]).toMatchObject({ msg: 'got {"a":1}', context: 'test' });
  });

  it('logs a response cut short as aborted', async () => {
    await new Promise<void>((done) => {
      get(`${base}/cut`, { headers: { 'x-request-id': 'unit-3' } }, (res) => {
        res.on('data', () => undefined);
        res.on('error', () => undefined);
        res.on('close', () => done());
      });
    });
    await accessLine('unit-3');
    expect(byReq('unit-3')).toEqual([
      expect.objectContaining({ msg: 'response aborted', aborted: true, url: '/cut' }),
    ]);
  });

  it.each([
    ['/healthz', 'unit-4'],
    ['/_narwhal/status.json?x=1', 'unit-5'],
  ])('writes the access lines of what is polled (%s) at debug', async (path, id) => {
    await (await fetch(`${base}${path}`, { headers: { 'x-request-id': id } })).text();
    await accessLine(id);
    expect(byReq(id)).toEqual([
      expect.objectContaining({ msg: 'request completed', level: 'debug' }),
    ]);
  });
});
