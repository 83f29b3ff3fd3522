import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readlinkSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';
import type { NarSpool } from '../../src/nar/nar-spool';
import type { NarExpectations } from '../../src/nar/nar-verifier';
import { VerifierPool, type SpoolCheck } from '../../src/nar/verification/verifier-pool';
import { nixSha256 } from './hash';

// What the NarSpool unit specs share: sample NARs, a hand-fed upstream body and a reader recorder.

/** Stand-in NAR content, compressed with the real xz. */
export function makeSample(size: number, seed: number) {
  const lines: string[] = [];
  let x = seed;
  let length = 0;
  while (length < size) {
    x = (x * 1103515245 + 12345) >>> 0;
    const line = `${lines.length} ${x.toString(36)}\n`;
    lines.push(line);
    length += line.length;
  }
  const nar = Buffer.from(lines.join('')).subarray(0, size);
  const file = execFileSync('xz', ['-c', '-6'], { input: nar, maxBuffer: 64 << 20 });
  const expect: NarExpectations = {
    compression: 'xz',
    fileHash: nixSha256(file),
    fileSize: file.length,
    narHash: nixSha256(nar),
    narSize: nar.length,
  };
  return { nar, file, expect };
}

/** An uncompressed NAR of random bytes (FileHash = NarHash). */
export function rawSample(size: number) {
  const file = randomBytes(size);
  const expect: NarExpectations = {
    compression: 'none',
    fileHash: nixSha256(file),
    fileSize: size,
    narHash: nixSha256(file),
    narSize: size,
  };
  return { file, expect, key: `${expect.fileHash!.slice('sha256:'.length)}.nar` };
}

/** A copy of `bytes` in memory of its own (never a slice of Node's shared small-buffer pool). */
export function ownCopy(bytes: Buffer): Buffer {
  const copy = Buffer.from(new ArrayBuffer(bytes.length));
  bytes.copy(copy);
  return copy;
}

export function chunks(bytes: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, i + size));
  return out;
}

/** An upstream body the test feeds by hand: chunks arrive only when pushed. */
export class Feed implements AsyncIterable<Buffer> {
  private readonly queue: Array<{ chunk?: Buffer; end?: true; error?: Error }> = [];
  private wake?: () => void;

  push(chunk: Buffer): void {
    this.queue.push({ chunk });
    this.poke();
  }

  end(): void {
    this.queue.push({ end: true });
    this.poke();
  }

  error(error: Error): void {
    this.queue.push({ error });
    this.poke();
  }

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    for (;;) {
      while (this.queue.length === 0) await new Promise<void>((resolve) => (this.wake = resolve));
      const item = this.queue.shift()!;
      if (item.error) throw item.error;
      if (item.end) return;
      yield item.chunk!;
    }
  }
}

export interface Received {
  chunks: Buffer[];
  bytes: number;
  ended: boolean;
  error?: Error;
  closed: boolean;
  data(): Buffer;
}

/** Consumes a reader in flowing mode and records what it delivered. */
export function consume(reader: Readable): Received {
  const r: Received = {
    chunks: [],
    bytes: 0,
    ended: false,
    closed: false,
    data: () => Buffer.concat(r.chunks),
  };
  reader.on('data', (c: Buffer) => {
    r.chunks.push(c);
    r.bytes += c.length;
  });
  reader.on('end', () => (r.ended = true));
  reader.on('error', (e) => (r.error = e));
  reader.on('close', () => (r.closed = true));
  return r;
}

/** Lets the event loop run until `cond` holds (bounded by turns, not by time). */
export async function waitFor(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 20_000; i++) {
    if (cond()) return;
    await tick();
  }
  throw new Error(`never happened: ${what}`);
}

export async function settle(turns = 50): Promise<void> {
  for (let i = 0; i < turns; i++) await tick();
}

/** File descriptors of this process that point at `path` (Linux). */
export function openFdsOf(path: string): string[] {
  return readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false;
    }
  });
}

export async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

let pool: VerifierPool | undefined;

/** A verifier-thread check of `spool` against `expect`, as NarFetcher starts one (one shared pool). */
export function checkOf(spool: NarSpool, expect: NarExpectations): SpoolCheck {
  pool ??= new VerifierPool();
  return pool.checkFile(spool.path, expect);
}
