import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  PutObjectCommand,
  UploadPartCommand,
  type CompletedPart,
  type S3Client,
} from '@aws-sdk/client-s3';

/** Where and how one object is uploaded. */
export interface UploadTarget {
  client: S3Client;
  bucket: string;
  key: string;
  contentType: string;
  /** Bytes per part (the last may be smaller); S3's minimum is 5 MiB. */
  partSize: number;
  /** Parts sent at once. */
  queueSize: number;
  /** Reused part buffers; a buffer is in one upload at a time. */
  buffers: PartBufferPool;
  /** Exact length of the body, when known: anything else fails the upload before it completes. */
  size?: number;
  /** Called if the multipart upload could not be aborted (its parts stay until a lifecycle rule). */
  onAbortFailed?: (uploadId: string, error: Error) => void;
  /**
   * Asked once every byte has arrived, before the object is made: true skips making it (another
   * writer stored the same object meanwhile); the upload is then aborted and nothing changes.
   */
  alreadyStored?: () => Promise<boolean>;
}

/**
 * Free part buffers, shared by the uploads of one store. Parts are copied into buffers that are
 * used again once S3 has acknowledged them, instead of a fresh multi-MiB buffer per part: a fresh
 * buffer lives long enough to reach V8's old generation and then stays until a full collection,
 * which with several parts a second is tens of MiB of garbage on top of the live ones.
 */
export class PartBufferPool {
  private readonly free: Buffer[] = [];

  constructor(
    readonly partSize: number,
    /** Buffers kept between uploads (each partSize bytes). */
    private readonly keep: number,
  ) {}

  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafe(this.partSize);
  }

  give(buf: Buffer): void {
    if (this.free.length < this.keep && buf.length === this.partSize) this.free.push(buf);
  }

  get idle(): number {
    return this.free.length;
  }
}

/**
 * Uploads `body` as one object: a single PutObject when it fits in one part, else a multipart upload
 * with up to `queueSize` parts in flight. Memory is bounded by (queueSize + 1) part buffers whatever
 * the body's length. The object appears only if the body ends cleanly with the expected length; on
 * any failure the multipart upload is aborted and the body's own error (if it failed) is rethrown.
 * Resolves false when `alreadyStored` said so at the end (nothing made).
 */
export async function uploadObject(t: UploadTarget, body: AsyncIterable<Buffer>): Promise<boolean> {
  const upload = new MultipartUpload(t);
  try {
    if (await upload.run(body)) return true;
  } catch (e) {
    await upload.abort();
    throw e;
  }
  await upload.abort();
  return false;
}

class MultipartUpload {
  private uploadId?: string;
  private readonly parts: CompletedPart[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  /** The first part request that failed: stops the upload. */
  private partError?: Error;
  /** Buffers held by this upload (filling or in flight), returned to the pool only after success. */
  private readonly held = new Set<Buffer>();

  constructor(private readonly t: UploadTarget) {}

  /** Uploads and makes the object; false when `alreadyStored` skipped making it. */
  async run(body: AsyncIterable<Buffer>): Promise<boolean> {
    const { partSize, size, key } = this.t;
    let part: Buffer | undefined;
    let filled = 0;
    let partNumber = 0;
    let length = 0;
    for await (const chunk of body) {
      length += chunk.length;
      if (size !== undefined && length > size) {
        throw new Error(`${key}: got more than the expected ${size} bytes`);
      }
      let off = 0;
      while (off < chunk.length) {
        if (part && filled === partSize) {
          // A full part is sent once more bytes follow, so that a body of exactly one part is a single
          // PutObject. Reading goes on only while fewer than queueSize parts are in flight.
          await this.send(++partNumber, part, filled);
          part = undefined;
        }
        if (!part) {
          part = this.takeBuffer();
          filled = 0;
        }
        const n = chunk.copy(part, filled, off);
        filled += n;
        off += n;
      }
    }
    if (size !== undefined && length !== size) {
      throw new Error(`${key}: got ${length} bytes, expected ${size}`);
    }
    if (partNumber === 0) {
      // Everything fits in one part: one request, nothing to abort.
      if (await this.t.alreadyStored?.()) return false;
      await this.putWhole(part?.subarray(0, filled) ?? Buffer.alloc(0));
      if (part) this.release(part);
      return true;
    }
    await this.send(++partNumber, part!, filled); // the last part: more than zero bytes
    await this.drain(0);
    if (await this.t.alreadyStored?.()) return false;
    await this.complete();
    return true;
  }

  async abort(): Promise<void> {
    // Let every part request settle first, so that the abort leaves no part behind.
    await Promise.allSettled(this.inFlight);
    this.held.clear(); // a failed request may still have been writing a buffer: never reuse them
    if (!this.uploadId) return;
    const { client, bucket, key } = this.t;
    try {
      await client.send(
        new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: this.uploadId }),
      );
    } catch (e) {
      this.t.onAbortFailed?.(this.uploadId, e as Error);
    }
  }

  private takeBuffer(): Buffer {
    const { size, partSize, buffers } = this.t;
    // A body known to be smaller than one part gets a buffer of its size, not a pooled one.
    const buf = size !== undefined && size < partSize ? Buffer.allocUnsafe(size) : buffers.take();
    this.held.add(buf);
    return buf;
  }

  private release(buf: Buffer): void {
    if (this.held.delete(buf)) this.t.buffers.give(buf);
  }

  private async send(partNumber: number, buf: Buffer, length: number): Promise<void> {
    await this.drain(this.t.queueSize - 1);
    if (!this.uploadId) {
      const { client, bucket, key, contentType } = this.t;
      const created = await client.send(
        new CreateMultipartUploadCommand({ Bucket: bucket, Key: key, ContentType: contentType }),
      );
      if (!created.UploadId) throw new Error(`${key}: S3 returned no upload id`);
      this.uploadId = created.UploadId;
    }
    const request = this.uploadPart(partNumber, buf.subarray(0, length)).then(
      () => this.release(buf),
      (e: unknown) => {
        this.partError ??= e instanceof Error ? e : new Error(String(e));
      },
    );
    const tracked = request.finally(() => this.inFlight.delete(tracked));
    this.inFlight.add(tracked);
  }

  /** Waits until at most `max` part requests are in flight; throws the first part failure. */
  private async drain(max: number): Promise<void> {
    while (this.inFlight.size > max && this.partError === undefined) {
      await Promise.race(this.inFlight);
    }
    if (this.partError !== undefined) throw this.partError;
  }

  private async uploadPart(partNumber: number, data: Buffer): Promise<void> {
    const { client, bucket, key } = this.t;
    const res = await client.send(
      new UploadPartCommand({
        Bucket: bucket,
        Key: key,
        UploadId: this.uploadId,
        PartNumber: partNumber,
        Body: data,
        ContentLength: data.length,
      }),
    );
    if (!res.ETag) throw new Error(`${key}: S3 returned no ETag for part ${partNumber}`);
    this.parts.push({
      PartNumber: partNumber,
      ETag: res.ETag,
      ChecksumCRC32: res.ChecksumCRC32,
      ChecksumCRC32C: res.ChecksumCRC32C,
      ChecksumCRC64NVME: res.ChecksumCRC64NVME,
      ChecksumSHA1: res.ChecksumSHA1,
      ChecksumSHA256: res.ChecksumSHA256,
    });
  }

  private async putWhole(data: Buffer): Promise<void> {
    const { client, bucket, key, contentType } = this.t;
    await client.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: key,
        Body: data,
        ContentLength: data.length,
        ContentType: contentType,
      }),
    );
  }

  private async complete(): Promise<void> {
    const { client, bucket, key } = this.t;
    this.parts.sort((a, b) => (a.PartNumber ?? 0) - (b.PartNumber ?? 0));
    await client.send(
      new CompleteMultipartUploadCommand({
        Bucket: bucket,
        Key: key,
        UploadId: this.uploadId,
        MultipartUpload: { Parts: this.parts },
      }),
    );
    this.uploadId = undefined; // completed: nothing to abort any more
  }
}
