import type { FileHandle } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { writeSettled } from '../common/write-settled';
import { sendChunks, type DirectBody } from './send-chunks';
import {
  releaseSendfileSlot,
  sendFile,
  sendfileDescriptor,
  takeSendfileSlot,
  type SendfileError,
} from './sendfile';

/**
 * Bytes read from the file at a time (two such buffers per response). With 512 KiB instead of
 * 256 KiB, a hot 64 MiB NAR makes half the thread-pool reads and socket writes: 20 sequential curl
 * downloads took 1.4–2.0 s instead of 2.1–2.4 s, 16 parallel ones 1.2–1.7 s instead of 1.4–1.9 s
 * (four alternating rounds on the development machine). 1 MiB gained little more for twice the
 * memory per client.
 */
const CHUNK_BYTES = 512 * 1024;

/**
 * With sendfile, the first bytes still go through the response (they carry the head), as one read of
 * this size; the rest is copied by the kernel. Smaller bodies are read and written: one or two
 * writes cost less than a hand-off to the thread pool.
 */
const SENDFILE_HEAD_BYTES = 64 * 1024;
export const SENDFILE_MIN_BYTES = 2 * CHUNK_BYTES;

export interface StoredFileOptions {
  /**
   * Send the bytes past the first SENDFILE_HEAD_BYTES with sendfile(2) when it is available (see
   * sendfile.ts); a client that takes no byte for `stallTimeoutMs` (0: never) is then cut by the
   * transfer itself, since StallGuard cannot see the bytes the kernel sends.
   */
  sendfile?: {
    stallTimeoutMs: number;
    /** Cuts `res` (whose client read nothing for `idleMs`) and reports it; else it is destroyed. */
    onStalled?: (res: ServerResponse, idleMs: number) => void;
  };
}

/**
 * A stored NAR file (or a byte range of it) to send to one client, from an open file handle.
 *
 * A read stream allocates a new buffer for every chunk: streaming a hot 64 MiB NAR allocated 64 MiB
 * of buffers that only the garbage collector gave back, and it spent a sixth of its time there.
 * `sendTo` reads into two buffers of its own, in turn (see sendChunks): one chunk is read while the
 * other is being written, and nothing is allocated per chunk.
 *
 * The handle is closed when sending ends, or by `close` if the body is not sent.
 */
export class StoredFile implements DirectBody {
  private closed = false;

  /** Sends bytes `start`..`end` (inclusive) of the file open as `handle`. */
  constructor(
    private readonly handle: FileHandle,
    readonly start: number,
    readonly end: number,
    private readonly options: StoredFileOptions = {},
  ) {}

  get length(): number {
    return this.end - this.start + 1;
  }

  /** A stored file has its bytes at hand. */
  ready(): Promise<void> {
    return Promise.resolve();
  }

  /**
   * Sends the bytes to `res`: with sendfile when it can (see StoredFileOptions), else through two
   * reused buffers (see DirectBody and sendChunks).
   */
  sendTo(res: ServerResponse, onSent?: (bytes: number) => void): Promise<number> {
    const sendfile = this.options.sendfile;
    if (sendfile && this.length >= SENDFILE_MIN_BYTES && takeSendfileSlot()) {
      return this.sendWithSendfile(res, sendfile, onSent).finally(releaseSendfileSlot);
    }
    return this.sendChunksFrom(res, this.start, onSent);
  }

  /** Bytes `position`..end through two reused buffers (see sendChunks); closes the file after. */
  private sendChunksFrom(
    res: ServerResponse,
    position: number,
    onSent?: (bytes: number) => void,
  ): Promise<number> {
    const next = async (buffer: Buffer): Promise<Buffer | null> => {
      if (position > this.end) return null;
      const want = Math.min(buffer.length, this.end - position + 1);
      const { bytesRead } = await this.handle.read(buffer, 0, want, position);
      if (bytesRead === 0) throw new Error('stored file is shorter than its recorded size');
      position += bytesRead;
      return bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead);
    };
    const left = this.end - position + 1;
    const first = Math.min(CHUNK_BYTES, left);
    const second = Math.min(CHUNK_BYTES, Math.max(0, left - CHUNK_BYTES));
    return sendChunks(res, [first, second], next, () => this.close(), onSent);
  }

  /**
   * The head and the first SENDFILE_HEAD_BYTES through the response, then, once the socket has
   * taken them (nothing of this response is left queued in Node), the rest by sendfile straight to
   * the socket, and an end that writes nothing more (the length was in the head). A transfer that
   * fails destroys the response: the client never sees a clean end. A socket that is not free for
   * sendfile after the first write (TLS, something still queued) gets the rest through the buffers.
   */
  private async sendWithSendfile(
    res: ServerResponse,
    { stallTimeoutMs, onStalled }: NonNullable<StoredFileOptions['sendfile']>,
    onSent?: (bytes: number) => void,
  ): Promise<number> {
    let handedOver = false;
    try {
      const head = Buffer.allocUnsafe(SENDFILE_HEAD_BYTES);
      const { bytesRead } = await this.handle.read(head, 0, head.length, this.start);
      if (bytesRead !== head.length)
        throw new Error('stored file is shorter than its recorded size');
      if (!(await writeSettled(res, head))) return 0; // the client is gone
      onSent?.(head.length);
      const position = this.start + head.length;
      const rest = await sendRestWithSendfile(
        res,
        this.handle.fd,
        position,
        this.end - position + 1,
        { stallTimeoutMs, onStalled },
        onSent,
        () => {
          handedOver = true;
          return this.sendChunksFrom(res, position, onSent);
        },
      );
      return head.length + rest;
    } catch (e) {
      res.destroy(e as Error);
      return 0;
    } finally {
      if (!handedOver) await this.close();
    }
  }

  /** Closes the file (when the body is not sent after all). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close().catch(() => undefined);
  }

  /** The bytes as chunks (for callers other than an HTTP response: tests, tools). */
  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    try {
      let position = this.start;
      while (position <= this.end) {
        const want = Math.min(CHUNK_BYTES, this.end - position + 1);
        const { bytesRead, buffer } = await this.handle.read(
          Buffer.allocUnsafe(want),
          0,
          want,
          position,
        );
        if (bytesRead === 0) throw new Error('stored file is shorter than its recorded size');
        position += bytesRead;
        yield buffer.subarray(0, bytesRead);
      }
    } finally {
      await this.close();
    }
  }

  /** Same as close(), for callers that treat every body as a stream. */
  destroy(): void {
    void this.close();
  }
}

/**
 * Sends `length` bytes of the file open as `fileFd`, from `position`, to `res` by sendfile, and
 * ends `res`; the caller has written the head and waited until the socket took everything before.
 * A transfer that fails destroys `res` (never a clean end); a client that stalls goes to
 * `onStalled`. When the socket is not free for sendfile (TLS, something still queued) or there is no
 * file descriptor, `otherwise` sends the rest. Resolves with the bytes sent; never rejects.
 */
export async function sendRestWithSendfile(
  res: ServerResponse,
  fileFd: number | undefined,
  position: number,
  length: number,
  { stallTimeoutMs, onStalled }: NonNullable<StoredFileOptions['sendfile']>,
  onSent: ((bytes: number) => void) | undefined,
  otherwise: () => Promise<number>,
): Promise<number> {
  const fd = sendfileDescriptor(res);
  if (fd === null || fileFd === undefined) return otherwise();
  const stop = new AbortController();
  const onClose = () => stop.abort();
  res.once('close', onClose);
  try {
    const result = await sendFile(fd, fileFd, position, length, stallTimeoutMs, stop.signal);
    if (result.sent > 0) onSent?.(result.sent);
    if (result.error?.code === 'ETIMEDOUT' && onStalled) onStalled(res, stallTimeoutMs);
    else if (result.error) res.destroy(describe(result.error));
    else res.end();
    return result.sent;
  } catch (e) {
    res.destroy(e as Error);
    return 0;
  } finally {
    res.removeListener('close', onClose);
  }
}

function describe(error: SendfileError): Error {
  if (error.code === 'ETIMEDOUT') return new Error('client stalled: it took no byte for too long');
  if (error.code === 'ENODATA') return new Error('stored file is shorter than its recorded size');
  return error;
}

/**
 * The whole of a small stream, if it has exactly `size` bytes (else null: the caller streams it
 * instead). Reads at most `size` + 1 bytes before giving up.
 */
export async function readWhole(body: Readable, size: number): Promise<Buffer | null> {
  const chunks: Buffer[] = [];
  let got = 0;
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      got += chunk.length;
      if (got > size) return null;
      chunks.push(chunk);
    }
  } finally {
    body.destroy();
  }
  return got === size ? Buffer.concat(chunks, got) : null;
}
