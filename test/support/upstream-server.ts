import { open, stat } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * A static HTTP server over a `file://` binary cache directory, standing in for an upstream
 * cache. It logs every request and can slow down or break NAR bodies on demand.
 */

export interface LoggedRequest {
  method: string;
  /** URL path without the query string. */
  path: string;
}

export type Fault = 'corrupt' | 'truncate';

const CONTENT_TYPES: Record<string, string> = {
  '.narinfo': 'text/x-nix-narinfo',
  '.ls': 'application/json',
};

const CHUNK_BYTES = 64 * 1024;

export class UpstreamServer {
  /** Every request received, in arrival order. */
  readonly requests: LoggedRequest[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly faults = new Map<string, Fault>();
  private bytesPerSecond: number | null = null;

  private constructor(
    private readonly server: Server,
    private readonly root: string,
    readonly url: string,
  ) {}

  static async start(root: string): Promise<UpstreamServer> {
    const server = createServer();
    await new Promise<void>((done, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => done());
    });
    const { port } = server.address() as AddressInfo;
    const upstream = new UpstreamServer(server, resolve(root), `http://127.0.0.1:${port}`);
    server.on('connection', (socket) => {
      upstream.sockets.add(socket);
      socket.once('close', () => upstream.sockets.delete(socket));
    });
    server.on('request', (req, res) => {
      upstream.handle(req, res).catch((err: unknown) => {
        if (!res.headersSent) {
          res.statusCode = 500;
          res.end(String(err));
        } else {
          res.destroy();
        }
      });
    });
    return upstream;
  }

  /** Requests matching all the given criteria. */
  count(filter: { method?: string; prefix?: string; suffix?: string } = {}): number {
    return this.requests.filter(
      (r) =>
        (filter.method === undefined || r.method === filter.method) &&
        (filter.prefix === undefined || r.path.startsWith(filter.prefix)) &&
        (filter.suffix === undefined || r.path.endsWith(filter.suffix)),
    ).length;
  }

  /** GETs of NAR files (`/nar/…`). */
  narGets(): number {
    return this.count({ method: 'GET', prefix: '/nar/' });
  }

  /** Limits NAR bodies to this rate (per response); `null` lifts the limit. */
  throttle(bytesPerSecond: number | null): void {
    this.bytesPerSecond = bytesPerSecond;
  }

  /** Flip one byte in the middle of any file whose path ends with `pathSuffix` (same length). */
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
    const closed = new Promise<void>((done) => this.server.close(() => done()));
    for (const socket of this.sockets) socket.destroy();
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
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://upstream').pathname);
    this.requests.push({ method, path });

    if (method !== 'GET' && method !== 'HEAD') {
      res.writeHead(405, { 'Content-Length': 0 }).end();
      return;
    }
    const file = normalize(join(this.root, path));
    if (!file.startsWith(this.root + sep)) {
      notFound(res);
      return;
    }
    const info = await stat(file).catch(() => null);
    if (!info?.isFile()) {
      notFound(res);
      return;
    }

    res.writeHead(200, {
      'Content-Length': info.size,
      'Content-Type': CONTENT_TYPES[extname(file)] ?? 'application/octet-stream',
    });
    if (method === 'HEAD') {
      res.end();
      return;
    }

    const isNar = path.startsWith('/nar/');
    const fault = this.faultFor(path);
    const half = Math.floor(info.size / 2);
    const limit = fault === 'truncate' ? half : info.size;
    const started = Date.now();
    const handle = await open(file, 'r');
    try {
      let sent = 0;
      while (sent < limit) {
        if (res.destroyed) return;
        const buf = Buffer.alloc(Math.min(CHUNK_BYTES, limit - sent));
        const { bytesRead } = await handle.read(buf, 0, buf.length, sent);
        if (bytesRead === 0) break;
        const chunk = buf.subarray(0, bytesRead);
        if (fault === 'corrupt' && half >= sent && half < sent + bytesRead) {
          chunk[half - sent] ^= 0xff;
        }
        sent += bytesRead;
        await write(res, chunk);
        const rate = isNar ? this.bytesPerSecond : null;
        if (rate !== null) {
          const due = started + (sent / rate) * 1000;
          const wait = due - Date.now();
          if (wait > 0) await sleep(wait);
        }
      }
    } finally {
      await handle.close();
    }
    if (fault === 'truncate') {
      // The first half has been handed to the kernel; drop the connection without a clean end.
      res.socket?.destroy();
      return;
    }
    res.end();
  }
}

function notFound(res: ServerResponse): void {
  const body = 'not found\n';
  res.writeHead(404, { 'Content-Length': Buffer.byteLength(body), 'Content-Type': 'text/plain' });
  res.end(body);
}

function write(res: ServerResponse, chunk: Buffer): Promise<void> {
  return new Promise((done, reject) => {
    res.write(chunk, (err) => (err ? reject(err) : done()));
  });
}
