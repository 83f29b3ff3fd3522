import { createHash } from 'node:crypto';
import { get, type Agent, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import { connect, type Socket } from 'node:net';
import { encodeNix32 } from '../../src/nix/base32';

/**
 * A client for looking at narwhal over a real socket: how a response ends matters (a NAR that
 * breaks off must not look complete), and Fastify `inject`, fetch and http.get hide some of it.
 */

export interface Received {
  /** Status code; 0 when the request failed before a response. */
  status: number;
  headers: IncomingHttpHeaders;
  /** The body ended as HTTP says it should (whole Content-Length or the final chunk). */
  complete: boolean;
  error?: string;
  /** Body bytes received. */
  bytes: number;
  /** nix32 of the sha256 of the body bytes received. */
  sha256: string;
  /** The body; only with `keepBody`. */
  body: Buffer;
  /** Milliseconds since `t0` when the first body byte arrived, and when the response ended. */
  firstByteAt?: number;
  endAt: number;
}

export interface GetOptions {
  headers?: OutgoingHttpHeaders;
  /** Default: a fresh connection of its own. */
  agent?: Agent;
  keepBody?: boolean;
  /** Hang up once this many body bytes arrived (a client going away); the result is incomplete. */
  stopAfterBytes?: number;
  /** Idle time after which the client gives up; default 60 s. */
  timeoutMs?: number;
  /** Origin of firstByteAt and endAt; default: when the request is made. */
  t0?: number;
}

export interface Download {
  /** Body bytes received so far. */
  received(): number;
  /** Settles (never rejects) when the response ends, breaks off or fails. */
  done: Promise<Received>;
}

/** GET that hashes the body as it streams (keeping it only if asked) and tells how it ended. */
export function download(url: string, options: GetOptions = {}): Download {
  const t0 = options.t0 ?? Date.now();
  const hash = createHash('sha256');
  const chunks: Buffer[] = [];
  let bytes = 0;
  let firstByteAt: number | undefined;
  let status = 0;
  let headers: IncomingHttpHeaders = {};
  let resolve!: (received: Received) => void;
  const done = new Promise<Received>((r) => (resolve = r));
  let settled = false;
  const settle = (complete: boolean, error?: string): void => {
    if (settled) return;
    settled = true;
    resolve({
      status,
      headers,
      complete,
      error,
      bytes,
      sha256: encodeNix32(hash.digest()),
      body: Buffer.concat(chunks),
      firstByteAt,
      endAt: Date.now() - t0,
    });
  };
  const req = get(url, { agent: options.agent ?? false, headers: options.headers }, (res) => {
    status = res.statusCode ?? 0;
    headers = res.headers;
    res.on('data', (chunk: Buffer) => {
      if (settled) return;
      firstByteAt ??= Date.now() - t0;
      bytes += chunk.length;
      hash.update(chunk);
      if (options.keepBody) chunks.push(chunk);
      if (options.stopAfterBytes !== undefined && bytes >= options.stopAfterBytes) {
        settle(false, 'stopped by the client');
        req.destroy();
      }
    });
    res.on('end', () => settle(res.complete));
    res.on('error', (err) => settle(false, err.message));
    res.on('close', () =>
      settle(
        res.complete && !res.errored,
        res.complete ? undefined : 'connection closed before the body ended',
      ),
    );
  });
  req.setTimeout(options.timeoutMs ?? 60_000, () => req.destroy(new Error('client timeout')));
  req.on('error', (err) => settle(false, err.message));
  return { received: () => bytes, done };
}

export function httpGet(url: string, options: GetOptions = {}): Promise<Received> {
  return download(url, options).done;
}

/** GET of a small text body. */
export async function httpGetText(url: string): Promise<{ status: number; body: string }> {
  const res = await httpGet(url, { keepBody: true });
  return { status: res.status, body: res.body.toString('utf8') };
}

export interface RawResponse {
  /** Status code from the status line; 0 when the connection closed before one arrived. */
  status: number;
  head: string;
  body: Buffer;
  /** Every status line's code in what came back (more than one for pipelined requests). */
  statuses: number[];
  /** Why the exchange ended badly (a reset, the client's timeout), if it did. */
  error?: string;
}

/**
 * Sends one request with the path exactly as given (no URL normalization: `..`, `%2e%2e` and
 * `%2F` reach the server as written, unlike with `inject`, fetch or http.get).
 */
export async function rawRequest(port: number, method: string, path: string): Promise<RawResponse> {
  const res = await rawExchange(
    port,
    `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`,
  );
  if (res.error !== undefined && res.status === 0) throw new Error(res.error);
  return res;
}

/**
 * Writes `bytes` (anything: a request, half of one, garbage) on a fresh connection and collects
 * what comes back until the server closes (or `timeoutMs` passes). With `halfClose` the client
 * ends its side after writing, so that a server waiting for the rest of a request sees it will
 * never come (Node then drops requests it has not answered yet). Never rejects.
 */
export function rawExchange(
  port: number,
  bytes: string | Buffer,
  { timeoutMs = 10_000, halfClose = false }: { timeoutMs?: number; halfClose?: boolean } = {},
): Promise<RawResponse> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let error: string | undefined;
    const socket = connect(port, '127.0.0.1', () =>
      halfClose ? socket.end(bytes) : socket.write(bytes),
    );
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', (e) => (error ??= e.message));
    socket.setTimeout(timeoutMs, () => {
      error ??= 'raw request timed out';
      socket.destroy();
    });
    socket.on('close', () => {
      const all = Buffer.concat(chunks);
      const split = all.indexOf('\r\n\r\n');
      const head = (split < 0 ? all : all.subarray(0, split)).toString('latin1');
      const statuses = [...all.toString('latin1').matchAll(/(?:^|\r\n)HTTP\/1\.[01] (\d{3})/g)].map(
        (m) => Number(m[1]),
      );
      resolve({
        // The final answer: past any 100 Continue.
        status: statuses.find((s) => s >= 200) ?? statuses[0] ?? 0,
        head,
        body: split < 0 ? Buffer.alloc(0) : all.subarray(split + 4),
        statuses,
        error,
      });
    });
  });
}

/**
 * A GET on a raw socket that reads nothing (paused) until told to: a client that stops reading.
 * `closed` settles when the connection ends; `received` counts what the socket took in.
 */
export function stalledGet(
  port: number,
  path: string,
): { socket: Socket; closed: Promise<void>; received: () => number } {
  const socket = connect(port, '127.0.0.1');
  let received = 0;
  socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
  socket.on('data', (chunk: Buffer) => void (received += chunk.length));
  socket.on('error', () => undefined);
  socket.pause();
  const closed = new Promise<void>((done) => socket.once('close', () => done()));
  return { socket, closed, received: () => received };
}

/** What getOverSocket returns: the fields of Fastify inject's response that the tests read. */
export interface SocketResponse {
  statusCode: number;
  headers: IncomingHttpHeaders;
  rawPayload: Buffer;
  body: string;
}

/**
 * A GET over a real connection, answered in the shape of Fastify inject's response. For what is
 * answered before Fastify (see FrontDoor): `inject` calls Fastify's handler straight, past the
 * node:http server, and would never see it.
 */
export async function getOverSocket(
  url: string,
  headers: OutgoingHttpHeaders = {},
): Promise<SocketResponse> {
  const r = await httpGet(url, { keepBody: true, headers });
  if (r.status === 0) throw new Error(`GET ${url}: ${r.error ?? 'no response'}`);
  return { statusCode: r.status, headers: r.headers, rawPayload: r.body, body: r.body.toString() };
}
