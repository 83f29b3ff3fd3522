import { open, stat } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { serializeNarInfo, type NarInfo } from '../../src/nix/narinfo';
import type { StorePathFixture } from './store-paths';

/**
 * A real HTTP upstream cache on 127.0.0.1:<random port>. It answers from routes set in memory (each
 * with a behaviour: serve, fail, redirect, hang, break off, hold back half), then, when started with
 * a `root`, from that `file://` binary cache directory; everything else is a 404. It records every
 * request, can slow NAR bodies down and break the bodies of chosen paths.
 */

export interface LoggedRequest {
  method: string;
  /** Path with the query string, as sent. */
  url: string;
  authorization?: string;
  /** When it arrived (epoch ms). */
  at: number;
}

/** How a body is broken on purpose. */
export type Fault =
  /** One byte in the middle flipped (same length). */
  | 'corrupt'
  /** The full length announced, half sent, then the connection dropped. */
  | 'truncate'
  /** The full length announced, half sent, then nothing more while the connection stays open. */
  | 'stall';

export type Behaviour =
  | {
      kind: 'serve';
      body: Buffer;
      contentType?: string;
      /** Wait before the response headers. */
      delayMs?: number;
      /** Pause after every chunk (a slow upstream). */
      chunkDelayMs?: number;
      /** More response headers (e.g. Content-Encoding). */
      headers?: Record<string, string>;
      /** Bytes per chunk (64 KiB unless given): with chunkDelayMs, a drip. */
      chunkBytes?: number;
    }
  | { kind: 'status'; status: number; headers?: Record<string, string> }
  | { kind: 'redirect'; location: string }
  /** Accept the request and never answer (until the server closes). */
  | { kind: 'hang' }
  /** Announce the full length, send half, then destroy the socket. */
  | { kind: 'truncate'; body: Buffer }
  /** Announce the full length, send half, then keep the connection open without sending more. */
  | { kind: 'stall'; body: Buffer }
  /** Announce the full length, send half, then the rest once `resume` settles (a download in progress). */
  | { kind: 'hold'; body: Buffer; resume: Promise<void> };

/** Where a body's bytes come from. */
type Source = { bytes: Buffer } | { file: string };

interface Reply {
  source: Source;
  size: number;
  contentType: string;
  delayMs?: number;
  chunkDelayMs?: number;
  headers?: Record<string, string>;
  chunkBytes?: number;
  fault?: Fault;
  /** Settles when the second half may be sent. */
  resume?: Promise<void>;
}

const CHUNK_BYTES = 64 * 1024;

const FILE_TYPES: Record<string, string> = {
  '.narinfo': 'text/x-nix-narinfo',
  '.ls': 'application/json',
};

export class FakeUpstream {
  /** Every request but the probes, in arrival order. */
  readonly requests: LoggedRequest[] = [];
  /** Requests for `/nix-cache-info` (narwhal's background reachability probe), kept apart. */
  readonly probes: LoggedRequest[] = [];
  /** Applied to every path without its own route or file (e.g. a whole upstream answering 500). */
  fallback: Behaviour | null = null;
  private readonly root: string | undefined;
  private readonly routes = new Map<string, Behaviour>();
  private readonly faults = new Map<string, Fault>();
  private readonly sockets = new Set<Socket>();
  private bytesPerSecond: number | null = null;
  private active = 0;
  /** Most requests (probes aside) this upstream was answering at once, since start or resetPeak. */
  peakConcurrency = 0;
  private server: Server | undefined;
  private address: string | undefined;

  private readonly host: string;

  /**
   * Not listening yet (see listen); routes may be set already. `host` is the loopback address to
   * listen on (default 127.0.0.1; 127.0.0.2 is another host as far as clients can tell).
   */
  constructor(options: { root?: string; host?: string } = {}) {
    this.root = options.root === undefined ? undefined : resolve(options.root);
    this.host = options.host ?? '127.0.0.1';
  }

  static async start(options: { root?: string; host?: string } = {}): Promise<FakeUpstream> {
    return new FakeUpstream(options).listen();
  }

  async listen(): Promise<this> {
    const server = createServer();
    await new Promise<void>((done, reject) => {
      server.once('error', reject);
      server.listen(0, this.host, () => done());
    });
    server.on('connection', (s) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    });
    server.on('request', (req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        if (res.headersSent) res.destroy();
        else res.writeHead(500, { 'content-type': 'text/plain' }).end(String(err));
      });
    });
    this.server = server;
    this.address = `http://${this.host}:${(server.address() as AddressInfo).port}`;
    return this;
  }

  /** `http://<host>:<port>`, once listening. */
  get url(): string {
    if (this.address === undefined) throw new Error('FakeUpstream is not listening yet');
    return this.address;
  }

  /** Serves `f`'s narinfo at `/<hash>.narinfo` and its NAR at the narinfo's URL. */
  publish(f: StorePathFixture, narInfo: NarInfo = f.narInfo): void {
    this.setNarInfo(f.hash, narInfo);
    this.set(`/${narInfo.url.split('?')[0]}`, { kind: 'serve', body: f.file });
  }

  /** Serves a narinfo (or any text in its place) at `/<hash>.narinfo`, and nothing else. */
  setNarInfo(
    hash: string,
    narInfo: NarInfo | string | Buffer,
    options: { delayMs?: number } = {},
  ): void {
    const body =
      typeof narInfo === 'string' || Buffer.isBuffer(narInfo)
        ? Buffer.from(narInfo)
        : Buffer.from(serializeNarInfo(narInfo));
    this.set(`/${hash}.narinfo`, {
      kind: 'serve',
      body,
      contentType: 'text/x-nix-narinfo',
      ...options,
    });
  }

  /**
   * Serves `body` at `path`: the first half at once, the rest only after `resume()` — a download
   * the test can look at while it is running.
   */
  hold(path: string, body: Buffer): { resume: () => void } {
    let resume!: () => void;
    this.set(path, { kind: 'hold', body, resume: new Promise<void>((r) => (resume = r)) });
    return { resume };
  }

  /** Answers `path` (without the query string) this way, before any file of the root. */
  set(path: string, b: Behaviour): void {
    this.routes.set(path, b);
  }

  delete(path: string): void {
    this.routes.delete(path);
  }

  /** Requests for exactly `path` (query string aside), of `method` or of any. */
  count(method: string | undefined, path: string): number {
    return this.requests.filter(
      (r) => (method === undefined || r.method === method) && r.url.split('?')[0] === path,
    ).length;
  }

  /** GETs of NAR files (`/nar/…`). */
  narGets(): number {
    return this.requests.filter((r) => r.method === 'GET' && r.url.startsWith('/nar/')).length;
  }

  /** Requests being answered now (probes aside). */
  get concurrency(): number {
    return this.active;
  }

  /** Limits NAR bodies (`/nar/…`) to this rate (per response); `null` lifts the limit. */
  throttle(bytesPerSecond: number | null): void {
    this.bytesPerSecond = bytesPerSecond;
  }

  /** Flip one byte in the middle of any body whose path ends with `pathSuffix` (same length). */
  corrupt(pathSuffix: string): void {
    this.faults.set(pathSuffix, 'corrupt');
  }

  /** Announce the full Content-Length but close the socket after half of the body. */
  truncate(pathSuffix: string): void {
    this.faults.set(pathSuffix, 'truncate');
  }

  clearFaults(): void {
    this.faults.clear();
  }

  /** Stops listening and destroys open connections, so clients see the upstream die. */
  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    const closed = new Promise<void>((done) => server.close(() => done()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  private faultFor(path: string): Fault | undefined {
    for (const [suffix, fault] of this.faults) {
      if (path.endsWith(suffix)) return fault;
    }
    return undefined;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    const path = url.split('?')[0];
    (path === '/nix-cache-info' ? this.probes : this.requests).push({
      method,
      url,
      authorization: req.headers.authorization,
      at: Date.now(),
    });
    if (path !== '/nix-cache-info') {
      this.active++;
      this.peakConcurrency = Math.max(this.peakConcurrency, this.active);
      res.once('close', () => this.active--);
    }
    const reply = await this.replyFor(method, url, path, res);
    if (reply) await this.send(method, path, res, reply);
  }

  /**
   * What to send: the route's answer, else the root's file, else the fallback's answer, else a 404.
   * Null when the request has been answered already (without a body to send).
   */
  private async replyFor(
    method: string,
    url: string,
    path: string,
    res: ServerResponse,
  ): Promise<Reply | null> {
    const route = this.routes.get(path);
    if (route) return this.answer(route, res);
    const file = await this.fileFor(url, method, res);
    if (file !== undefined) return file;
    return this.fallback ? this.answer(this.fallback, res) : notFound(res);
  }

  /** The body to send for `b`, or null when `b` has been answered without one. */
  private answer(b: Behaviour, res: ServerResponse): Reply | null {
    switch (b.kind) {
      case 'status':
        res
          .writeHead(b.status, {
            'content-type': 'text/plain',
            'content-length': 6,
            ...b.headers,
          })
          .end('error\n');
        return null;
      case 'hang':
        return null; // the socket stays open until close()
      case 'redirect':
        res.writeHead(302, { location: b.location, 'content-length': 0 }).end();
        return null;
      case 'serve':
        return {
          source: { bytes: b.body },
          size: b.body.length,
          contentType: b.contentType ?? 'application/x-nix-nar',
          delayMs: b.delayMs,
          chunkDelayMs: b.chunkDelayMs,
          headers: b.headers,
          chunkBytes: b.chunkBytes,
        };
      case 'truncate':
      case 'stall':
      case 'hold':
        return {
          source: { bytes: b.body },
          size: b.body.length,
          contentType: 'application/x-nix-nar',
          ...(b.kind === 'hold' ? { resume: b.resume } : { fault: b.kind }),
        };
    }
  }

  /** The root's file at `url`: undefined when there is none (or no root), null when refused. */
  private async fileFor(
    url: string,
    method: string,
    res: ServerResponse,
  ): Promise<Reply | null | undefined> {
    if (this.root === undefined) return undefined;
    if (method !== 'GET' && method !== 'HEAD') {
      res.writeHead(405, { 'content-length': 0 }).end();
      return null;
    }
    const file = normalize(join(this.root, decodeURIComponent(new URL(url, 'http://x').pathname)));
    if (!file.startsWith(this.root + sep)) return undefined;
    const info = await stat(file).catch(() => null);
    if (!info?.isFile()) return undefined;
    return {
      source: { file },
      size: info.size,
      contentType: FILE_TYPES[extname(file)] ?? 'application/octet-stream',
    };
  }

  private async send(
    method: string,
    path: string,
    res: ServerResponse,
    reply: Reply,
  ): Promise<void> {
    if (reply.delayMs) await sleep(reply.delayMs);
    res.writeHead(200, {
      'content-type': reply.contentType,
      'content-length': reply.size,
      ...reply.headers,
    });
    if (method === 'HEAD') {
      res.end();
      return;
    }
    const fault = reply.fault ?? this.faultFor(path);
    const half = Math.floor(reply.size / 2);
    const limit = fault === 'truncate' || fault === 'stall' ? half : reply.size;
    const rate = path.startsWith('/nar/') ? this.bytesPerSecond : null;
    const started = Date.now();
    let sent = 0;
    for await (const piece of chunksOf(reply.source, limit, reply.chunkBytes)) {
      if (res.destroyed) return;
      let chunk = piece;
      if (fault === 'corrupt' && half >= sent && half < sent + piece.length) {
        chunk = Buffer.from(piece); // never change the caller's buffer
        chunk[half - sent] ^= 0xff;
      }
      sent += chunk.length;
      await write(res, chunk);
      if (reply.resume && sent >= half) {
        await reply.resume;
        reply.resume = undefined;
      }
      if (reply.chunkDelayMs) await sleep(reply.chunkDelayMs);
      if (rate !== null) {
        const wait = started + (sent / rate) * 1000 - Date.now();
        if (wait > 0) await sleep(wait);
      }
    }
    if (fault === 'stall') return; // the socket stays open until close()
    if (fault === 'truncate') {
      // Let the first half reach the client, then drop the connection without a clean end.
      await sleep(20);
      res.socket?.destroy();
      return;
    }
    res.end();
  }
}

function notFound(res: ServerResponse): null {
  const body = 'not found\n';
  res.writeHead(404, { 'content-type': 'text/plain', 'content-length': body.length }).end(body);
  return null;
}

/** The first `limit` bytes of `source`, in chunks of 64 KiB. */
async function* chunksOf(
  source: Source,
  limit: number,
  chunkBytes = CHUNK_BYTES,
): AsyncIterable<Buffer> {
  if ('bytes' in source) {
    for (let off = 0; off < limit; off += chunkBytes) {
      yield source.bytes.subarray(off, Math.min(off + chunkBytes, limit));
    }
    return;
  }
  const handle = await open(source.file, 'r');
  try {
    for (let off = 0; off < limit;) {
      const buf = Buffer.alloc(Math.min(CHUNK_BYTES, limit - off));
      const { bytesRead } = await handle.read(buf, 0, buf.length, off);
      if (bytesRead === 0) return;
      off += bytesRead;
      yield buf.subarray(0, bytesRead);
    }
  } finally {
    await handle.close();
  }
}

function write(res: ServerResponse, chunk: Buffer): Promise<void> {
  return new Promise((done, reject) => {
    res.write(chunk, (err) => (err ? reject(err) : done()));
  });
}
