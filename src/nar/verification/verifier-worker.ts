import { open, type FileHandle } from 'node:fs/promises';
import { parentPort } from 'node:worker_threads';
import { NarMismatchError, NarTooLargeError } from '../../common/errors';
import { NarVerifier, type NarExpectations } from '../nar-verifier';
import { NarLister } from './nar-lister';
import type { FromWorker, ToWorker } from './protocol';

/**
 * A verifier thread: hashes and decompresses NARs for the main thread, several jobs at once, so that
 * neither sha256 nor a decoder (fzstd is pure JavaScript) ever runs on the event loop that serves
 * clients. A file job tails a spool as it grows; a stream job takes chunks posted to it; a list job
 * makes the listing of a NAR from chunks posted to it.
 */

const READ_BYTES = 256 * 1024;
const port = parentPort;
if (!port) throw new Error('verifier-worker must run in a worker thread');

function post(message: FromWorker): void {
  port!.postMessage(message);
}

/** What a job feeds its bytes to: a verifier, or a lister. */
interface Sink {
  readonly failure: Promise<void>;
  /** True when a chunk's buffer may be filled again once `update` resolved. */
  readonly releasesChunks?: boolean;
  update(chunk: Buffer): Promise<void>;
  finish(): Promise<string | void>;
  destroy(): void;
}

class Job {
  /** Bytes known to exist (file mode) or queued chunks (stream mode). */
  private available = 0;
  private ended = false;
  private aborted = false;
  /** Verified or failed (and reported). */
  private done = false;
  private wake?: () => void;
  private readonly queue: Buffer[] = [];

  constructor(
    readonly id: number,
    private readonly verifier: Sink,
    private readonly path?: string,
  ) {
    void this.run();
  }

  grew(size: number): void {
    this.available = size;
    this.poke();
  }

  chunk(bytes: Uint8Array): void {
    this.queue.push(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    this.poke();
  }

  end(size: number): void {
    if (this.path) this.available = size;
    this.ended = true;
    this.poke();
  }

  abort(): void {
    this.aborted = true;
    this.verifier.destroy();
    this.poke();
  }

  private poke(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private waitForMore(): Promise<void> {
    return new Promise((resolve) => (this.wake = resolve));
  }

  private async run(): Promise<void> {
    let handle: FileHandle | undefined;
    let readBuffer: Buffer | undefined;
    try {
      // A failure found mid-way (past NarSize) is reported at once, not when the input ends.
      this.verifier.failure.catch((e: Error) => this.fail(e));
      let offset = 0;
      for (;;) {
        if (this.aborted || this.done) return;
        if (this.path && offset < this.available) {
          // Opened on the first bytes: the spool may not exist yet when the check starts.
          handle ??= await open(this.path, 'r');
          // One buffer for the whole job when the verifier is done with a chunk once it took it;
          // else a fresh one each time (the decoder may still hold the previous one).
          const want = Math.min(READ_BYTES, this.available - offset);
          const buf = this.verifier.releasesChunks
            ? (readBuffer ??= Buffer.allocUnsafe(READ_BYTES)).subarray(0, want)
            : Buffer.allocUnsafe(want);
          const { bytesRead } = await handle.read(buf, 0, buf.length, offset);
          if (bytesRead === 0) throw new Error('the spool ended early');
          offset += bytesRead;
          await this.verifier.update(bytesRead === buf.length ? buf : buf.subarray(0, bytesRead));
          continue;
        }
        const next = this.queue.shift();
        if (next) {
          await this.verifier.update(next);
          post({ type: 'consumed', id: this.id, bytes: next.length });
          continue;
        }
        if (this.ended) break;
        await this.waitForMore();
      }
      const listing = await this.verifier.finish();
      this.finishWith({ type: 'verified', id: this.id, ...(listing ? { listing } : {}) });
    } catch (e) {
      this.fail(e as Error);
    } finally {
      await handle?.close().catch(() => undefined);
    }
  }

  private fail(e: Error): void {
    this.verifier.destroy();
    this.finishWith({
      type: 'failed',
      id: this.id,
      message: e.message,
      kind:
        e instanceof NarTooLargeError
          ? 'too-large'
          : e instanceof NarMismatchError
            ? 'mismatch'
            : 'io',
    });
  }

  private finishWith(message: FromWorker): void {
    if (this.done || this.aborted) return;
    this.done = true;
    jobs.delete(this.id);
    post(message);
    this.poke();
  }
}

const jobs = new Map<number, Job>();

function verifierFor(expect: NarExpectations): Sink {
  return new NarVerifier(expect, { onThisThread: true });
}

port.on('message', (m: ToWorker) => {
  switch (m.type) {
    case 'file':
      jobs.set(m.id, new Job(m.id, verifierFor(m.expect), m.path));
      return;
    case 'stream':
      jobs.set(m.id, new Job(m.id, verifierFor(m.expect)));
      return;
    case 'list':
      try {
        jobs.set(m.id, new Job(m.id, new NarLister(m.compression)));
      } catch (e) {
        post({ type: 'failed', id: m.id, message: (e as Error).message, kind: 'io' });
      }
      return;
    case 'grew':
      jobs.get(m.id)?.grew(m.size);
      return;
    case 'chunk':
      jobs.get(m.id)?.chunk(m.bytes);
      return;
    case 'end':
      jobs.get(m.id)?.end(m.size);
      return;
    case 'abort':
      jobs.get(m.id)?.abort();
      jobs.delete(m.id);
      return;
  }
});
