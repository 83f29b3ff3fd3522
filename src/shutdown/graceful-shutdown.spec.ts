import type { LoggerService } from '@nestjs/common';
import Fastify, { type FastifyInstance } from 'fastify';
import { createHash } from 'node:crypto';
import { Agent, get } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { GracefulShutdown, type Closable } from './graceful-shutdown';

const quiet: LoggerService = {
  log: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};

/** A Fastify server that streams `size` bytes in 16 KiB chunks, one every `delayMs`. */
async function server(size: number, delayMs: number): Promise<FastifyInstance> {
  const app = Fastify();
  app.get('/slow', (_req, reply) => {
    reply.raw.writeHead(200, { 'content-length': String(size) });
    let sent = 0;
    const tick = () => {
      if (reply.raw.destroyed) return;
      const n = Math.min(16 * 1024, size - sent);
      reply.raw.write(Buffer.alloc(n, 7));
      sent += n;
      if (sent < size) setTimeout(tick, delayMs);
      else reply.raw.end();
    };
    tick();
  });
  app.get('/quick', () => Promise.resolve('ok'));
  await app.listen({ port: 0, host: '127.0.0.1' });
  return app;
}

/** The app as GracefulShutdown sees it; `hooks` stands for Nest's shutdown hooks. */
function closable(app: FastifyInstance, hooks: () => Promise<void> = () => Promise.resolve()) {
  const calls: string[] = [];
  const target: Closable = {
    getHttpServer: () => app.server,
    getHttpAdapter: () => ({ getInstance: () => app }),
    close: async () => {
      calls.push('hooks');
      await app.close();
      await hooks();
    },
  };
  return { target, calls };
}

function fetchBody(port: number, path: string, agent?: Agent) {
  return new Promise<{ complete: boolean; bytes: number; sha: string }>((resolve, reject) => {
    get({ host: '127.0.0.1', port, path, agent: agent ?? false }, (res) => {
      const hash = createHash('sha256');
      let bytes = 0;
      res.on('data', (c: Buffer) => {
        bytes += c.length;
        hash.update(c);
      });
      res.on('error', () => undefined);
      res.on('close', () => resolve({ complete: res.complete, bytes, sha: hash.digest('hex') }));
    }).on('error', reject);
  });
}

function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });
}

const sleep = (ms: number) => new Promise((done) => setTimeout(done, ms));

async function until(check: () => Promise<boolean>, timeoutMs = 2000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await sleep(10);
  }
  return false;
}

describe('GracefulShutdown', () => {
  let app: FastifyInstance | undefined;
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  it('closes an idle keep-alive connection at once and exits 0', async () => {
    app = await server(1, 1);
    const port = (app.server.address() as AddressInfo).port;
    const agent = new Agent({ keepAlive: true });
    await fetchBody(port, '/quick', agent);
    const { target, calls } = closable(app);
    const began = Date.now();
    expect(
      await new GracefulShutdown(target, { timeoutMs: 30_000, logger: quiet }).run('SIGTERM'),
    ).toBe(0);
    expect(Date.now() - began).toBeLessThan(2000);
    expect(calls).toEqual(['hooks']);
    agent.destroy();
  });

  it('lets a response in flight finish, refusing new connections meanwhile', async () => {
    app = await server(512 * 1024, 10); // ~320 ms
    const port = (app.server.address() as AddressInfo).port;
    const shutdown = new GracefulShutdown(closable(app).target, {
      timeoutMs: 5_000,
      logger: quiet,
    });
    const agent = new Agent({ keepAlive: true });
    const body = fetchBody(port, '/slow', agent);
    await sleep(50);
    const code = shutdown.run('SIGTERM');
    expect(await until(() => refused(port))).toBe(true);
    const got = await body;
    expect(got).toMatchObject({ complete: true, bytes: 512 * 1024 });
    expect(got.sha).toBe(
      createHash('sha256')
        .update(Buffer.alloc(512 * 1024, 7))
        .digest('hex'),
    );
    expect(await code).toBe(0);
    agent.destroy();
  });

  it('cuts what is still running at the deadline (the client sees a broken body)', async () => {
    app = await server(8 * 1024 * 1024, 10); // ~5 s
    const port = (app.server.address() as AddressInfo).port;
    const shutdown = new GracefulShutdown(closable(app).target, { timeoutMs: 200, logger: quiet });
    const body = fetchBody(port, '/slow');
    await sleep(50);
    const began = Date.now();
    expect(await shutdown.run('SIGTERM')).toBe(0);
    expect(Date.now() - began).toBeLessThan(2000);
    const got = await body;
    expect(got.complete).toBe(false);
    expect(got.bytes).toBeLessThan(8 * 1024 * 1024);
  });

  it('a second signal cuts at once', async () => {
    app = await server(8 * 1024 * 1024, 10);
    const port = (app.server.address() as AddressInfo).port;
    const shutdown = new GracefulShutdown(closable(app).target, {
      timeoutMs: 30_000,
      logger: quiet,
    });
    const body = fetchBody(port, '/slow');
    await sleep(50);
    const began = Date.now();
    const first = shutdown.run('SIGTERM');
    await sleep(50);
    const second = shutdown.run('SIGINT');
    expect(await first).toBe(0);
    expect(await second).toBe(0);
    expect(Date.now() - began).toBeLessThan(2000);
    expect((await body).complete).toBe(false);
  });

  it('exits 1 when the shutdown hooks hang or fail', async () => {
    app = await server(1, 1);
    const hang = closable(app, () => new Promise(() => undefined)).target;
    expect(
      await new GracefulShutdown(hang, { timeoutMs: 100, hooksTimeoutMs: 100, logger: quiet }).run(
        'SIGTERM',
      ),
    ).toBe(1);
    app = await server(1, 1);
    const fail = closable(app, () => Promise.reject(new Error('pool'))).target;
    expect(await new GracefulShutdown(fail, { timeoutMs: 100, logger: quiet }).run('SIGTERM')).toBe(
      1,
    );
  });
});
