import { Injectable, Logger, type OnApplicationShutdown } from '@nestjs/common';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { DownloadFailedError } from '../../common/errors';
import type { Compression } from '../../nix/compression';
import { NarMismatchError, NarTooLargeError } from '../../common/errors';
import { NarVerifier, type NarExpectations } from '../nar-verifier';
import type { FromWorker, ToWorker } from './protocol';

/** A running check of one NAR in a verifier thread. */
export interface NarCheck {
  /** Rejects (DownloadFailedError) as soon as the bytes are known to be wrong, before the end. */
  readonly failed: Promise<never>;
  /** Resolves once every byte up to `size` is checked and right; rejects otherwise. */
  finish(size: number): Promise<void>;
  /** Stops the check (the download failed for another reason). */
  abandon(): void;
}

/** Checks a file that grows as a download is spooled to it. */
export interface SpoolCheck extends NarCheck {
  /**
   * The spool now holds `size` bytes, the last of them `chunk`: in its file (for a check that
   * reads the file), or arrived (for one that `checksChunks`).
   */
  grew(size: number, chunk: Buffer): void;
  /**
   * True when the check takes the chunks handed to `grew`, not the spool file: it may have them
   * before they are in the file.
   */
  readonly checksChunks?: boolean;
}

/** Work on chunks handed to it (a stored object read from storage). */
export interface StreamJob<T> {
  readonly failed: Promise<never>;
  /** Hands over the next chunk; resolves when the thread can take more (flow control). */
  write(chunk: Buffer): Promise<void>;
  /** No more chunks (`size` bytes in all); resolves the result. */
  finish(size: number): Promise<T>;
  abandon(): void;
}

/** Checks chunks handed to it. */
export type StreamCheck = StreamJob<void>;

/**
 * A spool announced at most this long (FileSize, or the upstream's Content-Length), whose NAR
 * decompresses to at most SMALL_NAR_BYTES, is checked on the event loop as its chunks arrive: the
 * work is a few tens of microseconds, while a verifier thread's round trips (messages, reading the
 * spool back) held a small cold NAR's last byte ~2.5 ms. The bounds keep the work small whatever the
 * bytes are: a longer body fails the spool, a longer NAR stops the decoder (NarTooLargeError).
 */
export const SMALL_SPOOL_BYTES = 64 * 1024;
export const SMALL_NAR_BYTES = 256 * 1024;

/** Bytes a stream check may have in flight to its thread before `write` waits. */
const STREAM_WINDOW = 4 * 1024 * 1024;

interface Slot {
  worker: Worker;
  jobs: Map<number, Job>;
  /** Ends an idle thread (see IDLE_MS). */
  idle?: NodeJS.Timeout;
}

/**
 * A thread that has had nothing to check for this long is ended (the next check starts one again,
 * in ~40 ms): an idle verifier holds ~20 MB (its heap, the decoders' last buffers). Its checks
 * decode on the thread itself, so ending it between checks never interrupts a native decoder.
 */
export const IDLE_MS = 10_000;

interface Job {
  settle(error?: Error, listing?: string): void;
  consumed?(bytes: number): void;
}

/**
 * Verifier threads: every NAR narwhal downloads (or checks in storage) is hashed and decompressed in
 * one of them, so that a slow decoder or a decompression bomb never blocks the event loop that serves
 * clients. Threads start on first use, each runs several checks at once, and one that has been idle
 * for IDLE_MS is ended.
 */
@Injectable()
export class VerifierPool implements OnApplicationShutdown {
  private readonly logger = new Logger('verifier');
  private readonly slots: (Slot | undefined)[];
  private nextId = 1;
  private closed = false;

  constructor(
    threads = defaultThreads(),
    private readonly idleMs = IDLE_MS,
  ) {
    this.slots = new Array<Slot | undefined>(threads).fill(undefined);
  }

  /** Threads running now. */
  get threads(): number {
    return this.slots.filter((s) => s !== undefined).length;
  }

  /**
   * Starts checking a spool against `expect`; report its growth with `grew`. `length` is what the
   * spool announced (it refuses more): a small NAR is checked here (see SMALL_SPOOL_BYTES), any
   * other in a verifier thread that reads the spool file at `path`.
   */
  checkSpool(path: string, expect: NarExpectations, length: number | undefined): SpoolCheck {
    if (this.closed) throw new DownloadFailedError('the verifier pool is closed');
    const small =
      length !== undefined &&
      length <= SMALL_SPOOL_BYTES &&
      (expect.narHash === undefined ||
        (expect.narSize !== undefined && expect.narSize <= SMALL_NAR_BYTES));
    return small ? checkOnThisThread(expect) : this.checkFile(path, expect);
  }

  /** Starts checking the spool file at `path` against `expect` in a verifier thread. */
  checkFile(path: string, expect: NarExpectations): SpoolCheck {
    const { id, slot, failed, result, settle } = this.start({ type: 'file', id: 0, path, expect });
    let finished = false;
    return {
      failed,
      grew: (size) => {
        if (!finished) this.send(slot, { type: 'grew', id, size });
      },
      finish: async (size) => {
        finished = true;
        this.send(slot, { type: 'end', id, size });
        await result;
      },
      abandon: () => this.abandon(slot, id, settle),
    };
  }

  /** Starts checking chunks against `expect`; hand them over with `write`. */
  checkStream(expect: NarExpectations): StreamCheck {
    return this.streamJob({ type: 'stream', id: 0, expect }, () => undefined);
  }

  /**
   * Starts making the listing (`.ls` JSON) of a `compression` NAR handed over with `write`; it is
   * decompressed and parsed in the thread.
   */
  listStream(compression: Compression): StreamJob<string> {
    return this.streamJob({ type: 'list', id: 0, compression }, (listing) => {
      if (listing === undefined) throw new DownloadFailedError('no listing came back');
      return listing;
    });
  }

  private streamJob<T>(
    message: Extract<ToWorker, { type: 'stream' | 'list' }>,
    resultOf: (listing: string | undefined) => T,
  ): StreamJob<T> {
    let inFlight = 0;
    let waiting: (() => void) | undefined;
    const consumed = (bytes: number) => {
      inFlight -= bytes;
      if (inFlight < STREAM_WINDOW && waiting) {
        const w = waiting;
        waiting = undefined;
        w();
      }
    };
    const { id, slot, failed, result, settle } = this.start(message, consumed);
    return {
      failed,
      write: async (chunk) => {
        // A copy the thread owns (the caller's buffer may be shared or reused).
        const bytes = new Uint8Array(chunk);
        inFlight += bytes.length;
        this.send(slot, { type: 'chunk', id, bytes }, [bytes.buffer]);
        if (inFlight >= STREAM_WINDOW) {
          await Promise.race([new Promise<void>((r) => (waiting = r)), failed]);
        }
      },
      finish: async (size) => {
        this.send(slot, { type: 'end', id, size });
        return resultOf(await result);
      },
      abandon: () => this.abandon(slot, id, settle),
    };
  }

  async onApplicationShutdown(): Promise<void> {
    this.closed = true;
    await Promise.all(
      this.slots.map(async (slot, i) => {
        this.slots[i] = undefined;
        if (!slot) return;
        clearTimeout(slot.idle);
        for (const job of slot.jobs.values()) job.settle(new DownloadFailedError('shutting down'));
        await slot.worker.terminate();
      }),
    );
  }

  private start(
    message: Extract<ToWorker, { type: 'file' | 'stream' | 'list' }>,
    consumed?: (bytes: number) => void,
  ) {
    if (this.closed) throw new DownloadFailedError('the verifier pool is closed');
    const id = this.nextId++;
    const slot = this.leastBusy();
    let settleResult!: (error?: Error, listing?: string) => void;
    let failEarly!: (error: Error) => void;
    const result = new Promise<string | undefined>((resolve, reject) => {
      settleResult = (error, listing) => (error ? reject(error) : resolve(listing));
    });
    const failed = new Promise<never>((_resolve, reject) => (failEarly = reject));
    // Both are awaited by the caller when it needs them; an early failure is not "unhandled".
    result.catch(() => undefined);
    failed.catch(() => undefined);
    let settled = false;
    const settle = (error?: Error, listing?: string) => {
      if (settled) return;
      settled = true;
      slot.jobs.delete(id);
      if (slot.jobs.size === 0) this.idleSoon(slot);
      if (error) failEarly(error);
      settleResult(error, listing);
    };
    clearTimeout(slot.idle);
    slot.jobs.set(id, { settle, consumed });
    this.send(slot, { ...message, id });
    return { id, slot, failed, result, settle };
  }

  /** Ends `slot`'s thread if it is still without work after idleMs. */
  private idleSoon(slot: Slot): void {
    clearTimeout(slot.idle);
    slot.idle = setTimeout(() => {
      if (slot.jobs.size > 0 || this.closed) return;
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots[i] = undefined;
      slot.worker.terminate().catch(() => undefined);
    }, this.idleMs);
    slot.idle.unref();
  }

  private abandon(slot: Slot, id: number, settle: (error?: Error) => void): void {
    if (!slot.jobs.has(id)) return;
    this.send(slot, { type: 'abort', id });
    settle(new DownloadFailedError('verification abandoned'));
  }

  private send(slot: Slot, message: ToWorker, transfer?: ArrayBuffer[]): void {
    slot.worker.postMessage(message, transfer);
  }

  private leastBusy(): Slot {
    let best = -1;
    for (let i = 0; i < this.slots.length; i++) {
      const s = this.slots[i];
      if (!s) return (this.slots[i] = this.spawn(i));
      if (best < 0 || s.jobs.size < this.slots[best]!.jobs.size) best = i;
    }
    return this.slots[best]!;
  }

  private spawn(index: number): Slot {
    const worker = new Worker(workerScript(), {
      // A verifier holds decoder state and a few read buffers; decompressed bytes are hashed and
      // dropped, so the heap stays small whatever the NAR's size.
      resourceLimits: { maxOldGenerationSizeMb: 64, maxYoungGenerationSizeMb: 8 },
    });
    worker.unref();
    const slot: Slot = { worker, jobs: new Map() };
    worker.on('message', (m: FromWorker) => {
      const job = slot.jobs.get(m.id);
      if (!job) return;
      if (m.type === 'consumed') job.consumed?.(m.bytes);
      else if (m.type === 'verified') job.settle(undefined, m.listing);
      else job.settle(failureOf(m));
    });
    const lost = (why: string) => {
      if (this.slots[index] === slot) this.slots[index] = undefined;
      if (slot.jobs.size > 0 && !this.closed) this.logger.error(`verifier thread ${why}`);
      for (const job of slot.jobs.values()) job.settle(new DownloadFailedError(`verifier ${why}`));
      slot.jobs.clear();
    };
    worker.on('error', (e) => lost(`failed: ${e.message}`));
    worker.on('exit', (code) => lost(`exited with code ${code}`));
    return slot;
  }
}

/** A check of a small spool's chunks as they arrive, on the calling thread (see checkSpool). */
function checkOnThisThread(expect: NarExpectations): SpoolCheck {
  const verifier = new NarVerifier(expect, { onThisThread: true });
  let failEarly!: (error: Error) => void;
  const failed = new Promise<never>((_resolve, reject) => (failEarly = reject));
  failed.catch(() => undefined);
  verifier.failure.catch((e: Error) => failEarly(e));
  // Chunks are fed in order, each once the decoder took the one before.
  let fed: Promise<void> = Promise.resolve();
  let abandoned = false;
  return {
    failed,
    checksChunks: true,
    grew: (_size, chunk) => {
      fed = fed.then(() => (abandoned ? undefined : verifier.update(chunk)));
      fed.catch((e: Error) => failEarly(e));
    },
    finish: async () => {
      await fed;
      if (abandoned) throw new DownloadFailedError('verification abandoned');
      await verifier.finish();
    },
    abandon: () => {
      abandoned = true;
      verifier.destroy();
    },
  };
}

function failureOf(m: Extract<FromWorker, { type: 'failed' }>): Error {
  switch (m.kind) {
    case 'too-large':
      return new NarTooLargeError(m.message);
    case 'mismatch':
      return new NarMismatchError(m.message);
    case 'io':
      return new DownloadFailedError(m.message);
  }
}

/** VerifierPool for dependency injection, with the default number of threads. */
export const VERIFIER_POOL_PROVIDER = {
  provide: VerifierPool,
  useFactory: () => new VerifierPool(),
};

/** One thread per spare core, at least one and at most four. */
function defaultThreads(): number {
  return Math.max(1, Math.min(4, availableParallelism() - 1));
}

/**
 * The compiled worker script. Under the test runner the sources are TypeScript, which a worker
 * thread cannot load: then the build's copy in dist/ is used (`npm test` builds first).
 */
function workerScript(): string {
  const here = join(__dirname, 'verifier-worker.js');
  if (existsSync(here)) return here;
  const built = here.replace(`${join('src', 'nar')}`, join('dist', 'nar'));
  if (!existsSync(built)) {
    throw new Error(`verifier worker not found at ${here} or ${built}: run npm run build`);
  }
  return built;
}
