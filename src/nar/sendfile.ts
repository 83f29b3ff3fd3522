import type { FileHandle } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import { constants } from 'node:os';
import type { OpenHotFile } from '../common/front-door';

/**
 * The kernel's sendfile(2), from the small native helper in `native/` (built by `npm ci` with
 * node-gyp; Linux only). It copies a range of an open file to a connected socket inside the kernel,
 * as nginx does with `sendfile on`: the bytes never pass through JavaScript buffers, and sending a
 * hot 64 MiB NAR costs a fraction of the CPU of reading and writing it.
 *
 * Where the helper is not built (another OS, no compiler at install time) or `--cache-sendfile
 * false`, stored NARs are read and written through two reused buffers instead (StoredFile).
 */
interface NativeSendfile {
  send(
    socketFd: number,
    fileFd: number,
    offset: number,
    length: number,
    stallMs: number,
    done: (sent: number, errno: number) => void,
  ): object;
  cancel(transfer: object): void;
}

/** Where the helper is built, from `dist/nar/` and from `src/nar/` alike. */
export const SENDFILE_ADDON_PATH = join(
  __dirname,
  '..',
  '..',
  'native',
  'build',
  'Release',
  'narwhal_sendfile.node',
);

function load(): { native: NativeSendfile | null; error?: string } {
  if (process.platform !== 'linux') return { native: null, error: 'not Linux' };
  try {
    const addon = { exports: {} as NativeSendfile };
    process.dlopen(addon, SENDFILE_ADDON_PATH);
    return { native: addon.exports };
  } catch (e) {
    return { native: null, error: (e as Error).message.split('\n')[0] };
  }
}

const loaded = load();

/** Whether sendfile can be used here, and if not, why. */
export const sendfileSupport: { readonly available: boolean; readonly reason?: string } = {
  available: loaded.native !== null,
  reason: loaded.error,
};

/**
 * Transfers running at once, at most. Each has a thread of its own (64 KiB of stack), waiting while
 * its client reads; a response that finds no free slot is read and written as without sendfile.
 */
export const MAX_SENDFILE_TRANSFERS = 32;
let limit = MAX_SENDFILE_TRANSFERS;
let running = 0;

/** Sets the most transfers at once (tests use a small number); returns the one it replaces. */
export function setSendfileLimit(transfers: number): number {
  const before = limit;
  limit = transfers;
  return before;
}

/** Transfers started and bytes the kernel sent, since the process started (for tests and tools). */
export const sendfileCounters = { transfers: 0, bytes: 0, running: () => running };

/** What Node keeps on a socket without typing it. */
type InternalSocket = Socket & {
  _httpMessage?: unknown;
  _handle?: { fd?: unknown } | null;
  encrypted?: boolean;
};

/**
 * The descriptor of `res`'s socket, if sendfile may write to it now: plain TCP (not TLS), open,
 * nothing queued, the socket is this response's (a pipelined request's response gets the socket
 * only once the one before it has finished), its head is already on the socket (node:http sends
 * it with the first body bytes: bytes sendfile wrote before it would come first on the wire) and
 * the body is not chunked (sendfile's bytes would have no chunk framing).
 */
export function sendfileDescriptor(res: ServerResponse): number | null {
  const socket: InternalSocket | null = res.socket;
  if (!socket || socket.destroyed || socket.writableLength > 0 || socket.encrypted) return null;
  if (!headOnSocket(res) || (res as InternalResponse).chunkedEncoding) return null;
  if (socket._httpMessage !== res) return null;
  const fd = socket._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : null;
}

/** What node:http keeps on a response without typing it. */
type InternalResponse = ServerResponse & { _headerSent?: boolean; chunkedEncoding?: boolean };

/**
 * Whether `res`'s head has gone to its socket. `headersSent` is no answer: it turns true at
 * `writeHead`, while node:http keeps the head until the first body bytes and writes both at once.
 */
export function headOnSocket(res: ServerResponse): boolean {
  return (res as InternalResponse)._headerSent === true;
}

/** Takes one of the slots (MAX_SENDFILE_TRANSFERS), if sendfile is available and one is free. */
export function takeSendfileSlot(): boolean {
  if (!loaded.native || running >= limit) return false;
  running++;
  return true;
}

export function releaseSendfileSlot(): void {
  running = Math.max(0, running - 1);
}

/** How a transfer ended: the bytes the socket took, and the error that stopped it, if any. */
export interface SendfileResult {
  sent: number;
  /** `undefined` when all `length` bytes were sent. */
  error?: SendfileError;
}

export class SendfileError extends Error {
  constructor(
    readonly code: string,
    readonly errno: number,
  ) {
    super(`sendfile failed: ${code}`);
  }

  /** The client went away (or the response was cancelled): nothing to report. */
  get clientGone(): boolean {
    return ['EPIPE', 'ECONNRESET', 'ECANCELED'].includes(this.code);
  }
}

const ERRNO_NAMES = new Map(Object.entries(constants.errno).map(([name, n]) => [n, name]));

/**
 * Copies `length` bytes of file descriptor `fileFd` from `offset` to the socket descriptor
 * `socketFd`, on a thread of its own. The helper duplicates both descriptors first, so the
 * transfer keeps writing to the connection it started on even if the socket is closed meanwhile
 * (the number could be reused by another connection). It gives up with ETIMEDOUT after `stallMs`
 * (0: never) without progress, and stops when `signal` aborts (within ~200 ms).
 *
 * The caller holds a slot (takeSendfileSlot) and must not write to the socket until this settles.
 */
export function sendFile(
  socketFd: number,
  fileFd: number,
  offset: number,
  length: number,
  stallMs: number,
  signal?: AbortSignal,
): Promise<SendfileResult> {
  const native = loaded.native;
  if (!native) return Promise.reject(new Error(`sendfile is not available: ${loaded.error}`));
  return new Promise((resolve, reject) => {
    let onAbort: (() => void) | undefined;
    try {
      const transfer = native.send(socketFd, fileFd, offset, length, stallMs, (sent, errno) => {
        sendfileCounters.bytes += sent;
        if (onAbort) signal?.removeEventListener('abort', onAbort);
        if (errno === 0) return resolve({ sent });
        const name = ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
        resolve({ sent, error: new SendfileError(name, errno) });
      });
      sendfileCounters.transfers++;
      if (signal?.aborted) native.cancel(transfer);
      else if (signal) {
        onAbort = () => native.cancel(transfer);
        signal.addEventListener('abort', onAbort, { once: true });
      }
    } catch (e) {
      reject(e instanceof Error ? e : new Error(String(e)));
    }
  });
}

/**
 * A file for the fast lane to send whole (see HotFile): takes a slot, then opens the file with
 * `open`; undefined (and nothing held) when there is no free slot or the file cannot be opened.
 * The slot and the file are given back by `close`.
 */
export async function openForLane(
  open: () => Promise<FileHandle | undefined>,
  size: number,
  stallMs: number,
): Promise<OpenHotFile | undefined> {
  if (!takeSendfileSlot()) return undefined;
  let handle: FileHandle | undefined;
  try {
    handle = await open();
  } finally {
    if (!handle) releaseSendfileSlot();
  }
  if (!handle) return undefined;
  const file = handle;
  let closed = false;
  return {
    send: async (socketFd, signal) => {
      const { sent, error } = await sendFile(socketFd, file.fd, 0, size, stallMs, signal);
      return { sent, failed: error?.code };
    },
    close: async () => {
      if (closed) return;
      closed = true;
      releaseSendfileSlot();
      await file.close();
    },
  };
}
