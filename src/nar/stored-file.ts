import type { FileHandle } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';

/**
 * Bytes read from the file at a time (two such buffers per response). With 512 KiB instead of
 * 256 KiB, a hot 64 MiB NAR makes half the thread-pool reads and socket writes: 20 sequential curl
 * downloads took 1.4–2.0 s instead of 2.1–2.4 s, 16 parallel ones 1.2–1.7 s instead of 1.4–1.9 s
 * (four alternating rounds on the development machine). 1 MiB gained little more for twice the
 * memory per client.
 */
const CHUNK_BYTES = 512 * 1024;

/**
 * A stored NAR file (or a byte range of it) to send to one client, from an open file handle.
 *
 * A read stream allocates a new buffer for every chunk: streaming a hot 64 MiB NAR allocated 64 MiB
 * of buffers that only the garbage collector gave back, and it spent a sixth of its time there.
 * `sendTo` reads into two buffers of its own, in turn, and reuses one only once the response has
 * handed its bytes to the socket (the write callback): one chunk is read while the other is being
 * written, and nothing is allocated per chunk.
 *
 * The handle is closed when sending ends, or by `close` if the body is not sent.
 */
export class StoredFile {
  private closed = false;

  /** Sends bytes `start`..`end` (inclusive) of the file open as `handle`. */
  constructor(
    private readonly handle: FileHandle,
    readonly start: number,
    readonly end: number,
  ) {}

  get length(): number {
    return this.end - this.start + 1;
  }

  /**
   * Writes the bytes to `res` (whose head the caller has set) and ends it, calling `onSent` with
   * each chunk's size once it is handed to the socket (all before the response ends). Resolves with
   * the number of bytes handed to the socket; never rejects: if the file cannot be read, or is shorter than
   * announced, the response is destroyed (the client sees a broken body, never a clean end), and if
   * the client goes away, sending stops.
   */
  async sendTo(res: ServerResponse, onSent?: (bytes: number) => void): Promise<number> {
    const buffers = [
      Buffer.allocUnsafe(Math.min(CHUNK_BYTES, this.length)),
      Buffer.allocUnsafe(Math.min(CHUNK_BYTES, Math.max(0, this.length - CHUNK_BYTES))),
    ];
    /** The write of each buffer still in flight (the buffer is not reused before it settles). */
    const writing = [Promise.resolve(true), Promise.resolve(true)];
    // A write still pending when the connection closes may never call back: 'close' settles it.
    let gone = res.destroyed;
    let onClose!: () => void;
    const closed = new Promise<boolean>((resolve) => {
      onClose = () => {
        gone = true;
        resolve(false);
      };
    });
    res.once('close', onClose);
    const settled = (write: Promise<boolean>) => Promise.race([write, closed]);
    let position = this.start;
    let sent = 0;
    try {
      for (let i = 0; position <= this.end && !gone; i ^= 1) {
        if (!(await settled(writing[i]))) break; // that write failed: the client is gone
        const buffer = buffers[i];
        const want = Math.min(buffer.length, this.end - position + 1);
        const { bytesRead } = await this.handle.read(buffer, 0, want, position);
        if (bytesRead === 0) throw new Error('stored file is shorter than its recorded size');
        if (gone) break;
        position += bytesRead;
        const chunk = bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead);
        writing[i] = new Promise<boolean>((resolve) => {
          res.write(chunk, (e) => {
            if (!e) {
              sent += bytesRead;
              onSent?.(bytesRead);
            }
            resolve(!e);
          });
        });
      }
      await Promise.all(writing.map(settled));
      if (!gone && position > this.end) res.end();
    } catch (e) {
      res.destroy(e as Error);
      await Promise.all(writing.map(settled));
    } finally {
      res.removeListener('close', onClose);
      await this.close();
    }
    return sent;
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
