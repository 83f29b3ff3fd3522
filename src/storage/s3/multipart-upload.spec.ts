import { randomBytes } from 'node:crypto';
import type { S3Client } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { PartBufferPool, uploadObject, type UploadTarget } from './multipart-upload';

// A scripted stand-in for S3Client (unit test): records each command, holds part requests open for a
// while, and can fail chosen requests. The real S3 protocol is covered by test/storage on s3rver.

const PART = 64 * 1024; // large enough that every part buffer has its own ArrayBuffer

interface Sent {
  name: string;
  input: Record<string, unknown>;
  /** For part and put requests: a copy of the bytes and the buffer they were sent from. */
  bytes?: Buffer;
  arrayBuffer?: ArrayBufferLike;
}

class FakeS3 {
  sent: Sent[] = [];
  inFlight = 0;
  maxInFlight = 0;
  failPart?: number;
  failAbort = false;
  partDelayMs = 2;
  /** When a part request fails: after how long (the others may still be running then). */
  failDelayMs = 1;

  asClient(): S3Client {
    return { send: (command: object) => this.send(command) } as unknown as S3Client;
  }

  async send(command: object): Promise<unknown> {
    const name = command.constructor.name;
    const input = (command as { input: Record<string, unknown> }).input;
    const entry: Sent = { name, input };
    const body = input.Body;
    if (Buffer.isBuffer(body)) {
      entry.bytes = Buffer.from(body); // what S3 received, before the buffer can be reused
      entry.arrayBuffer = body.buffer;
    }
    this.sent.push(entry);
    switch (name) {
      case 'CreateMultipartUploadCommand':
        return { UploadId: 'upload-1' };
      case 'UploadPartCommand': {
        this.inFlight++;
        this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
        try {
          const failing = input.PartNumber === this.failPart;
          await new Promise((r) => setTimeout(r, failing ? this.failDelayMs : this.partDelayMs));
          if (failing) throw new Error(`part ${String(input.PartNumber)} refused`);
          return { ETag: `"etag-${String(input.PartNumber)}"` };
        } finally {
          this.inFlight--;
        }
      }
      case 'AbortMultipartUploadCommand':
        if (this.failAbort) throw new Error('MethodNotAllowed');
        return {};
      default:
        return {};
    }
  }

  names(): string[] {
    return this.sent.map((s) => s.name);
  }

  parts(): Sent[] {
    return this.sent.filter((s) => s.name === 'UploadPartCommand');
  }
}

function target(s3: FakeS3, overrides: Partial<UploadTarget> = {}): UploadTarget {
  return {
    client: s3.asClient(),
    bucket: 'b',
    key: 'nar/x.nar',
    contentType: 'application/x-nix-nar',
    partSize: PART,
    queueSize: 2,
    buffers: new PartBufferPool(PART, 3),
    ...overrides,
  };
}

/** `data` in chunks of `chunk` bytes (odd sizes, so that parts never line up with chunks). */
async function* chunked(data: Buffer, chunk = 10_007, failAt?: number): AsyncGenerator<Buffer> {
  for (let off = 0; off < data.length; off += chunk) {
    if (failAt !== undefined && off >= failAt) throw new Error('download failed half-way');
    yield data.subarray(off, off + chunk);
    await new Promise((r) => setImmediate(r));
  }
}

describe('uploadObject', () => {
  it('sends a multipart upload whose parts reassemble the body, in order', async () => {
    const s3 = new FakeS3();
    const data = randomBytes(3 * PART + 12_345);
    await uploadObject(target(s3, { size: data.length }), chunked(data));

    expect(s3.names()).toEqual([
      'CreateMultipartUploadCommand',
      'UploadPartCommand',
      'UploadPartCommand',
      'UploadPartCommand',
      'UploadPartCommand',
      'CompleteMultipartUploadCommand',
    ]);
    const parts = s3.parts();
    expect(parts.map((p) => p.bytes?.length)).toEqual([PART, PART, PART, 12_345]);
    expect(Buffer.concat(parts.map((p) => p.bytes!)).equals(data)).toBe(true);
    const complete = s3.sent.at(-1)!.input as {
      UploadId: string;
      MultipartUpload: { Parts: { PartNumber: number; ETag: string }[] };
    };
    expect(complete.UploadId).toBe('upload-1');
    expect(complete.MultipartUpload.Parts.map((p) => [p.PartNumber, p.ETag])).toEqual([
      [1, '"etag-1"'],
      [2, '"etag-2"'],
      [3, '"etag-3"'],
      [4, '"etag-4"'],
    ]);
  });

  it('keeps at most queueSize parts in flight and queueSize + 1 buffers, reused across uploads', async () => {
    const s3 = new FakeS3();
    s3.partDelayMs = 5;
    const pool = new PartBufferPool(PART, 3);
    const t = target(s3, { queueSize: 2, buffers: pool });
    await uploadObject(t, chunked(randomBytes(20 * PART), 8_192));
    await uploadObject({ ...t, key: 'nar/y.nar' }, chunked(randomBytes(20 * PART), 65_536));

    expect(s3.parts()).toHaveLength(40);
    expect(s3.maxInFlight).toBe(2);
    // Every part of both uploads came from the same three buffers.
    expect(new Set(s3.parts().map((p) => p.arrayBuffer)).size).toBe(3);
    expect(pool.idle).toBe(3);
  });

  it('sends a body of at most one part as a single PutObject', async () => {
    for (const length of [0, 1, PART - 1, PART]) {
      const s3 = new FakeS3();
      const data = randomBytes(length);
      await uploadObject(target(s3), chunked(data, 4_000));
      expect(s3.names()).toEqual(['PutObjectCommand']);
      expect(s3.sent[0]?.bytes?.equals(data)).toBe(true);
      expect(s3.sent[0]?.input.ContentLength).toBe(length);
    }
  });

  it('gives a body known to be smaller than a part a buffer of its own size, not a pooled one', async () => {
    const s3 = new FakeS3();
    const pool = new PartBufferPool(PART, 3);
    await uploadObject(target(s3, { buffers: pool, size: 1000 }), chunked(randomBytes(1000)));
    expect(s3.sent[0]?.arrayBuffer?.byteLength).toBeLessThan(PART);
    expect(pool.idle).toBe(0);
  });

  it('aborts, after every part request has settled, when the body fails; rethrows its error', async () => {
    const s3 = new FakeS3();
    s3.partDelayMs = 20;
    const pool = new PartBufferPool(PART, 3);
    const data = randomBytes(6 * PART);
    await expect(
      uploadObject(target(s3, { buffers: pool }), chunked(data, 10_007, 4 * PART)),
    ).rejects.toThrow('download failed half-way');

    expect(s3.names()).not.toContain('CompleteMultipartUploadCommand');
    expect(s3.names().at(-1)).toBe('AbortMultipartUploadCommand');
    expect(s3.sent.at(-1)?.input.UploadId).toBe('upload-1');
    expect(s3.inFlight).toBe(0); // nothing was still running when the abort went out
  });

  it('aborts when a part is refused, and reports that error', async () => {
    const s3 = new FakeS3();
    s3.failPart = 2;
    s3.partDelayMs = 30;
    const pool = new PartBufferPool(PART, 3);
    await expect(
      uploadObject(target(s3, { buffers: pool }), chunked(randomBytes(10 * PART))),
    ).rejects.toThrow('part 2 refused');
    // The refused part's buffer may still have been on the wire: it is never handed out again.
    const refused = s3.parts().find((p) => p.input.PartNumber === 2)?.arrayBuffer;
    const reusable = Array.from({ length: pool.idle }, () => pool.take().buffer);
    expect(refused).toBeDefined();
    expect(reusable).not.toContain(refused);
    expect(s3.names()).not.toContain('CompleteMultipartUploadCommand');
    expect(s3.names().at(-1)).toBe('AbortMultipartUploadCommand');
    // It stopped sending parts soon after the failure instead of uploading the rest of the body.
    expect(s3.parts().length).toBeLessThan(10);
  });

  it('fails before completing when the body is shorter or longer than announced', async () => {
    for (const [actual, announced, message] of [
      [3 * PART, 3 * PART + 1, `got ${3 * PART} bytes, expected ${3 * PART + 1}`],
      [3 * PART, 2 * PART, `got more than the expected ${2 * PART} bytes`],
      [100, 101, 'got 100 bytes, expected 101'],
    ] as const) {
      const s3 = new FakeS3();
      await expect(
        uploadObject(target(s3, { size: announced }), chunked(randomBytes(actual))),
      ).rejects.toThrow(message);
      expect(s3.names()).not.toContain('CompleteMultipartUploadCommand');
      expect(s3.names()).not.toContain('PutObjectCommand');
      if (s3.names().includes('CreateMultipartUploadCommand')) {
        expect(s3.names().at(-1)).toBe('AbortMultipartUploadCommand');
      }
    }
  });

  it('reports the body error, not the abort error, when the abort is refused', async () => {
    const s3 = new FakeS3();
    s3.failAbort = true;
    const failed: string[] = [];
    await expect(
      uploadObject(
        target(s3, { onAbortFailed: (id, e) => failed.push(`${id}: ${e.message}`) }),
        chunked(randomBytes(5 * PART), 10_007, 3 * PART),
      ),
    ).rejects.toThrow('download failed half-way');
    expect(failed).toEqual(['upload-1: MethodNotAllowed']);
  });
});

describe('PartBufferPool', () => {
  it('keeps at most `keep` buffers of its part size', () => {
    const pool = new PartBufferPool(PART, 2);
    const a = pool.take();
    const b = pool.take();
    const c = pool.take();
    expect(a.length).toBe(PART);
    pool.give(a);
    pool.give(b);
    pool.give(c);
    pool.give(Buffer.alloc(10));
    expect(pool.idle).toBe(2);
    expect(pool.take()).toBe(b);
  });
});
