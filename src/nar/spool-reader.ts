import type { ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { DownloadFailedError } from '../common/errors';
import type { ByteRange } from './byte-range';
import type { NarSpool } from './nar-spool';
import { sendChunks, type DirectBody } from './send-chunks';
import { headOnSocket, releaseSendfileSlot, takeSendfileSlot } from './sendfile';
import { sendRestWithSendfile, SENDFILE_MIN_BYTES, type StoredFileOptions } from './stored-file';

/** Bytes read from the spool at a time, and each of a reader's two buffers. */
const READ_CHUNK = 64 * 1024;

const noop = () => undefined;

/**
 * One client's view of a spool: tails it until the download is verified or fails. Read it as a
 * stream, or let it write itself to a response (`sendTo`, see DirectBody), which reuses two buffers
 * instead of allocating one per chunk read from the spool.
 */
export class SpoolReader extends Readable implements DirectBody {
  private offset: number;
  /** Offset just past the last byte this reader delivers. */
  private readonly limit: number;
  private wake?: () => void;
  private released = false;
  /** Used as a DirectBody (ready, sendTo), not read as a stream: it has no 'error' listener. */
  private direct = false;
  /** The response `sendTo` writes to. */
  private target?: ServerResponse;
  private readonly onProgress = () => {
    // A failed download ends every reader at once, also one that is paused (not reading).
    if (this.spool.state === 'failed') {
      if (this.direct) this.target?.destroy(this.spool.error);
      else if (!this.destroyed) this.destroy(this.spool.error);
    }
    this.wakeUp();
  };

  constructor(
    private readonly spool: NarSpool,
    private readonly onClose: () => void,
    range?: ByteRange,
    /** With `sendfile`, what is left once the download is verified goes out by sendfile (sendTo). */
    private readonly options: StoredFileOptions = {},
  ) {
    super({ highWaterMark: READ_CHUNK });
    this.offset = range?.start ?? 0;
    this.limit = range ? range.end + 1 : Infinity;
    spool.on('progress', this.onProgress);
    this.once('end', () => this.close());
  }

  async ready(): Promise<void> {
    this.direct = true;
    const d = this.spool;
    for (;;) {
      if (d.state === 'failed') {
        this.close();
        throw d.error ?? new DownloadFailedError('download failed');
      }
      if (d.state === 'verified' || this.offset < this.visibleEnd()) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  /**
   * Writes the bytes as they become available; once the download is verified, what is left (1 MiB
   * or more, with a free sendfile slot) goes out by sendfile from the spool file instead — a herd of
   * clients that joined a download is mostly served after it has been verified.
   */
  sendTo(res: ServerResponse, onSent?: (bytes: number) => void): Promise<number> {
    this.direct = true;
    this.target = res;
    res.once('close', () => this.wakeUp()); // a client gone while this waits for the download
    const sendfile = this.options.sendfile;
    let handOff = false;
    const next = (buffer: Buffer) => {
      if (sendfile && this.mayHandOff()) {
        handOff = true;
        return Promise.resolve(null);
      }
      return this.nextChunk(buffer);
    };
    const chunks = sendChunks(
      res,
      [READ_CHUNK, READ_CHUNK],
      next,
      () => (handOff ? undefined : this.close()),
      onSent,
      () => !handOff,
    );
    if (!sendfile) return chunks;
    return chunks.then(async (sent) => {
      if (!handOff) return sent;
      try {
        const end = Math.min(this.limit, this.spool.arrived);
        const rest = await sendRestWithSendfile(
          res,
          this.spool.fd,
          this.offset,
          end - this.offset,
          sendfile,
          onSent,
          // Not free for sendfile after all (TLS, something queued): the rest through the buffers.
          () => sendChunks(res, [READ_CHUNK, READ_CHUNK], (b) => this.nextChunk(b), noop, onSent),
        );
        return sent + rest;
      } finally {
        releaseSendfileSlot();
        this.close();
      }
    });
  }

  /**
   * Whether what is left goes out by sendfile: the download verified and all in the spool file,
   * the spool open, SENDFILE_MIN_BYTES or more left, and a sendfile slot free (taken here; sendTo
   * gives it back).
   */
  private mayHandOff(): boolean {
    const left = Math.min(this.limit, this.spool.arrived) - this.offset;
    return (
      // A reader that joins a verified download writes its first chunk (and with it the head)
      // itself: sendfile may only follow bytes node:http has put on the socket.
      this.target !== undefined &&
      headOnSocket(this.target) &&
      this.spool.inFile &&
      this.spool.fd !== undefined &&
      left >= SENDFILE_MIN_BYTES &&
      takeSendfileSlot()
    );
  }

  override _read(): void {
    this.nextChunk().then(
      (chunk) => this.push(chunk),
      (e: Error) => this.destroy(e),
    );
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.close();
    cb(err);
  }

  /**
   * The next bytes this reader may deliver, waiting for the download while there are none: a view
   * of an upstream chunk still in memory, or bytes read from the spool into `into` (a new buffer
   * when none is given). Null at the end (or once `sendTo`'s client is gone); throws when the
   * download failed.
   */
  private async nextChunk(into?: Buffer): Promise<Buffer | null> {
    const d = this.spool;
    for (;;) {
      if (d.state === 'failed') throw d.error ?? new DownloadFailedError('download failed');
      if (this.target?.destroyed) return null;
      const visible = this.visibleEnd();
      if (this.offset < visible) {
        const recent = d.recentAt(this.offset, Math.min(visible, this.offset + READ_CHUNK));
        if (recent) {
          this.offset += recent.length;
          return recent;
        }
        // Bytes not among the recent chunks are in the file (see NarSpool.remember).
        const inFile = Math.min(visible, d.written) - this.offset;
        if (inFile <= 0) throw new Error('spool bytes neither in memory nor in the file');
        const want = Math.min(into?.length ?? READ_CHUNK, inFile);
        const buf = into ?? Buffer.allocUnsafe(want);
        const n = await d.readAt(want === buf.length ? buf : buf.subarray(0, want), this.offset);
        if (n === 0) throw new Error('spool ended early');
        this.offset += n;
        return n === buf.length ? buf : buf.subarray(0, n);
      }
      if (d.state === 'verified') return null;
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  /** Offset just past the bytes this reader may deliver now. */
  private visibleEnd(): number {
    const visible = Math.min(this.limit, this.spool.readableBytes);
    // A range that ends before the end of the file keeps its own last byte until verification.
    return this.spool.state !== 'verified' && visible === this.limit ? visible - 1 : visible;
  }

  private wakeUp(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private close(): void {
    if (this.released) return;
    this.released = true;
    this.spool.off('progress', this.onProgress);
    this.onClose();
  }
}
