import type { ServerResponse } from 'node:http';

/**
 * A body that writes itself to a response (a stored file, a running download's spool) instead of
 * being piped as a stream: see sendChunks.
 */
export interface DirectBody {
  /**
   * Writes the body to `res` (whose head the caller has set) and ends it, calling `onSent` with each
   * chunk's size once it is handed to the socket. Resolves with the bytes handed to the socket;
   * never rejects (a body that breaks destroys the response: the client never sees a clean end).
   */
  sendTo(res: ServerResponse, onSent?: (bytes: number) => void): Promise<number>;
  /**
   * Resolves once there is a first byte to send. A body that may fail before its first byte (a
   * running download) rejects with the failure instead, and lets go of what it held, so that the
   * failure is answered as an error (a 502, a 507) instead of a broken 200.
   */
  ready(): Promise<void>;
}

export function isDirectBody(body: unknown): body is DirectBody {
  const direct = body as Partial<DirectBody> | null;
  return typeof direct?.sendTo === 'function' && typeof direct.ready === 'function';
}

/**
 * Where sendChunks gets the bytes: the next chunk, read into `buffer` (the result is `buffer` or a
 * part of it) or found elsewhere in memory (any other buffer, sent as it is); null after the last.
 * Throwing breaks the response.
 */
export type NextChunk = (buffer: Buffer) => Promise<Buffer | null>;

/**
 * Writes chunks to `res` through two buffers of `bufferBytes` each, in turn: one is filled while the
 * other is being written, and a buffer is filled again only once the response has handed its bytes
 * to the socket (the write callback). Nothing is allocated per chunk.
 *
 * A stream allocates a new buffer for every chunk instead, and those buffers are given back only
 * when the garbage collector runs. Writing them costs little JavaScript heap, so V8 collects late:
 * 24 clients of a 64 MiB download held up to 64 MiB of such buffers at once.
 *
 * Ends `res` after the last chunk (unless `end` says not to: the caller then sends the rest itself,
 * once every write here has settled); destroys it when `next` throws; stops when the client goes
 * away. `done` runs once sending has ended, in every case.
 */
export async function sendChunks(
  res: ServerResponse,
  bufferBytes: readonly [number, number],
  next: NextChunk,
  done: () => Promise<void> | void,
  onSent?: (bytes: number) => void,
  end: () => boolean = () => true,
): Promise<number> {
  const buffers = [Buffer.allocUnsafe(bufferBytes[0]), Buffer.allocUnsafe(bufferBytes[1])];
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
  let sent = 0;
  let ended = false;
  try {
    for (let i = 0; !gone; i ^= 1) {
      if (!(await settled(writing[i]))) break; // that write failed: the client is gone
      const chunk = await next(buffers[i]);
      if (chunk === null) {
        ended = true;
        break;
      }
      if (gone) break;
      writing[i] = new Promise<boolean>((resolve) => {
        res.write(chunk, (e) => {
          if (!e) {
            sent += chunk.length;
            onSent?.(chunk.length);
          }
          resolve(!e);
        });
      });
    }
    await Promise.all(writing.map(settled));
    if (!gone && ended && end()) res.end();
  } catch (e) {
    res.destroy(e as Error);
    await Promise.all(writing.map(settled));
  } finally {
    res.removeListener('close', onClose);
    await done();
  }
  return sent;
}
