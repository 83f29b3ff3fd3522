import { createHash, randomBytes } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { compress } from 'lzma-native';
import { encodeNix32 } from '../../src/nix/base32';
import { narInfoFingerprint } from '../../src/nix/fingerprint';
import { serializeNarInfo, type NarInfo } from '../../src/nix/narinfo';
import {
  formatPublicKey,
  generateSecretKey,
  signFingerprint,
  type SecretKey,
} from '../../src/signing/keys';

/**
 * Test material made in-process: store paths, NAR files (xz), narinfos signed with keys generated
 * here, and a real node:http upstream cache that serves them and records every request.
 */

export const STORE_DIR = '/nix/store';

export function sha256Nix32(data: Uint8Array): string {
  return encodeNix32(createHash('sha256').update(data).digest());
}

/** A random 32-character store path hash part (nix32 of 20 random bytes). */
export function randomHashPart(): string {
  return encodeNix32(randomBytes(20));
}

/** Serializes one regular file as a NAR (`nix-archive-1`), the format Nix streams. */
export function narOfFile(contents: Buffer): Buffer {
  const parts: Buffer[] = [];
  const str = (s: string | Buffer): void => {
    const b = typeof s === 'string' ? Buffer.from(s) : s;
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(b.length));
    parts.push(len, b, Buffer.alloc((8 - (b.length % 8)) % 8));
  };
  for (const s of ['nix-archive-1', '(', 'type', 'regular', 'contents']) str(s);
  str(contents);
  str(')');
  return Buffer.concat(parts);
}

export interface TestKey {
  secret: SecretKey;
  /** `name:base64`, as given to --cache-upstream-public-key. */
  publicText: string;
}

export function makeKey(name: string): TestKey {
  const secret = generateSecretKey(name);
  return { secret, publicText: formatPublicKey(secret) };
}

export interface StorePathFixture {
  hash: string;
  storePath: string;
  /** The (compressed) NAR as served by the upstream. */
  file: Buffer;
  /** The uncompressed NAR. */
  nar: Buffer;
  /** nix32 of sha256(file): the file name narwhal must use. */
  fileHash: string;
  /** `<fileHash>.nar.xz` (`.nar` without compression) */
  narName: string;
  narInfo: NarInfo;
}

export interface FixtureOptions {
  name?: string;
  /** Size of the file inside the NAR; random bytes. Default 4 KiB. */
  size?: number;
  references?: string[];
  /** Omit FileHash and FileSize, as attic and nix-serve do. */
  withoutFileHash?: boolean;
  /** Upstream `URL:` value; default `nar/<fileHash>.nar.xz`. */
  url?: string;
  /** Store path written in the narinfo (defaults to the one of `hash`). */
  storePath?: string;
  /** `none` serves the NAR itself; default `xz`. */
  compression?: 'xz' | 'none';
}

/** A store path with an xz NAR; its narinfo is signed by `keys` (may be none). */
export async function makeStorePath(
  keys: TestKey[],
  opts: FixtureOptions = {},
): Promise<StorePathFixture> {
  const hash = randomHashPart();
  const storePath = `${STORE_DIR}/${hash}-${opts.name ?? 'module-test'}`;
  const nar = narOfFile(randomBytes(opts.size ?? 4096));
  const compression = opts.compression ?? 'xz';
  const file = compression === 'xz' ? await compress(nar, { preset: 1 }) : nar;
  const fileHash = sha256Nix32(file);
  const narName = `${fileHash}.nar${compression === 'xz' ? '.xz' : ''}`;
  const narInfo: NarInfo = {
    storePath: opts.storePath ?? storePath,
    url: opts.url ?? `nar/${narName}`,
    compression,
    narHash: `sha256:${sha256Nix32(nar)}`,
    narSize: nar.length,
    references: opts.references ?? [],
    deriver: `${randomHashPart()}-${opts.name ?? 'module-test'}.drv`,
    sigs: [],
  };
  if (!opts.withoutFileHash) {
    narInfo.fileHash = `sha256:${fileHash}`;
    narInfo.fileSize = file.length;
  }
  sign(narInfo, keys);
  return { hash, storePath, file, nar, fileHash, narName, narInfo };
}

/** Replaces the signatures of `n` by fresh ones from `keys`. */
export function sign(n: NarInfo, keys: TestKey[]): NarInfo {
  const fp = narInfoFingerprint(n, STORE_DIR);
  n.sigs = keys.map((k) => signFingerprint(k.secret, fp));
  return n;
}

export interface LoggedRequest {
  method: string;
  /** Path with the query string. */
  url: string;
  authorization?: string;
}

export type Behaviour =
  | {
      kind: 'serve';
      body: Buffer;
      contentType?: string;
      /** Wait before the response headers. */
      delayMs?: number;
      /** Pause after every 64 KiB chunk (a slow upstream). */
      chunkDelayMs?: number;
    }
  | { kind: 'status'; status: number }
  | { kind: 'redirect'; location: string }
  /** Accept the request and never answer (until the server closes). */
  | { kind: 'hang' }
  /** Announce the full length, send half, then destroy the socket. */
  | { kind: 'truncate'; body: Buffer }
  /** Announce the full length, send half, then keep the connection open without sending more. */
  | { kind: 'stall'; body: Buffer };

/** A real HTTP upstream cache on 127.0.0.1:<random port>. Unknown paths are 404. */
export class FakeUpstream {
  readonly requests: LoggedRequest[] = [];
  /** Requests for `/nix-cache-info` (narwhal's background reachability probe), kept apart. */
  readonly probes: LoggedRequest[] = [];
  private readonly routes = new Map<string, Behaviour>();
  private readonly sockets = new Set<Socket>();
  /** Applied to every path without its own route (e.g. a whole upstream answering 500). */
  fallback: Behaviour | null = null;

  private constructor(
    private readonly server: Server,
    readonly url: string,
  ) {}

  static async start(): Promise<FakeUpstream> {
    const server = createServer();
    await new Promise<void>((done, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => done());
    });
    const { port } = server.address() as AddressInfo;
    const up = new FakeUpstream(server, `http://127.0.0.1:${port}`);
    server.on('connection', (s) => {
      up.sockets.add(s);
      s.once('close', () => up.sockets.delete(s));
    });
    server.on('request', (req, res) => {
      up.handle(req, res).catch(() => res.destroy());
    });
    return up;
  }

  /** Serves `f`'s narinfo at `/<hash>.narinfo` and its NAR at the narinfo's URL. */
  publish(f: StorePathFixture, narInfo: NarInfo = f.narInfo): void {
    this.set(`/${f.hash}.narinfo`, {
      kind: 'serve',
      body: Buffer.from(serializeNarInfo(narInfo)),
      contentType: 'text/x-nix-narinfo',
    });
    this.set(`/${narInfo.url.split('?')[0]}`, { kind: 'serve', body: f.file });
  }

  set(path: string, b: Behaviour): void {
    this.routes.set(path, b);
  }

  delete(path: string): void {
    this.routes.delete(path);
  }

  count(method: string | undefined, path: string): number {
    return this.requests.filter(
      (r) => (method === undefined || r.method === method) && r.url.split('?')[0] === path,
    ).length;
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((done) => this.server.close(() => done()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    const path = url.split('?')[0];
    (path === '/nix-cache-info' ? this.probes : this.requests).push({
      method,
      url,
      authorization: req.headers.authorization,
    });
    const b = this.routes.get(path) ?? this.fallback;
    if (!b) {
      res.writeHead(404, { 'content-type': 'text/plain', 'content-length': 10 }).end('not found\n');
      return;
    }
    switch (b.kind) {
      case 'status':
        res
          .writeHead(b.status, { 'content-type': 'text/plain', 'content-length': 6 })
          .end('error\n');
        return;
      case 'hang':
        return; // the socket stays open until close()
      case 'redirect':
        res.writeHead(302, { location: b.location, 'content-length': 0 }).end();
        return;
      case 'serve':
        if (b.delayMs) await sleep(b.delayMs);
        res.writeHead(200, {
          'content-type': b.contentType ?? 'application/x-nix-nar',
          'content-length': b.body.length,
        });
        if (method === 'HEAD') {
          res.end();
          return;
        }
        await writeChunked(res, b.body, b.chunkDelayMs);
        res.end();
        return;
      case 'truncate':
      case 'stall':
        res.writeHead(200, {
          'content-type': 'application/x-nix-nar',
          'content-length': b.body.length,
        });
        if (method === 'HEAD') {
          res.end();
          return;
        }
        await writeChunked(res, b.body.subarray(0, Math.floor(b.body.length / 2)));
        if (b.kind === 'stall') return; // the socket stays open until close()
        await sleep(20);
        res.socket?.destroy();
        return;
    }
  }
}

async function writeChunked(res: ServerResponse, body: Buffer, chunkDelayMs = 0): Promise<void> {
  const CHUNK = 64 * 1024;
  for (let off = 0; off < body.length; off += CHUNK) {
    if (res.destroyed) return;
    const ok = res.write(body.subarray(off, off + CHUNK));
    if (!ok) await new Promise<void>((done) => res.once('drain', () => done()));
    if (chunkDelayMs > 0) await sleep(chunkDelayMs);
  }
}

/** A URL on 127.0.0.1 where nothing listens (a port taken from listen(0), then released). */
export async function closedPortUrl(): Promise<string> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', () => done()));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((done) => server.close(() => done()));
  return `http://127.0.0.1:${port}`;
}

/** Every file under `dir` with its size, as `relative/path:size`, sorted. Missing dir → []. */
export async function snapshot(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else out.push(`${relative(dir, p)}:${(await stat(p)).size}`);
    }
  };
  await walk(dir);
  return out.sort();
}

/** Polls `check` until it returns true (or throws after `timeoutMs`). */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(20);
  }
  throw new Error(`${what} not reached within ${timeoutMs} ms`);
}

export interface RawResponse {
  /** Status code from the status line; 0 when the connection closed before one arrived. */
  status: number;
  head: string;
  body: Buffer;
}

/**
 * Sends one request with the path exactly as given (no URL normalization: `..`, `%2e%2e` and
 * `%2F` reach the server as written, unlike with `inject`, fetch or http.get).
 */
export function rawRequest(port: number, method: string, path: string): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => {
      socket.end(`${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
    });
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', reject);
    socket.setTimeout(10_000, () => socket.destroy(new Error('raw request timed out')));
    socket.on('close', () => {
      const all = Buffer.concat(chunks);
      const split = all.indexOf('\r\n\r\n');
      const head = (split < 0 ? all : all.subarray(0, split)).toString('latin1');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
      resolve({ status, head, body: split < 0 ? Buffer.alloc(0) : all.subarray(split + 4) });
    });
  });
}
