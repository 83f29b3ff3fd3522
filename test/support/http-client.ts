import { createHash } from 'node:crypto';
import { get, type Agent, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import { connect } from 'node:net';
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
