import { Inject, Injectable } from '@nestjs/common';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { NotFoundError } from '../common/errors';
import { NAR_STORE, type NarStore } from '../storage/nar-store';

/** Where a side document lives in storage (next to the NARs, see storage/object-keys.ts). */
export const documentKeys = {
  /** `<hash>.ls`, the listing of a store path's NAR. */
  listing: (hash: string) => `ls/${hash}.ls`,
  /** `log/<drv base name>`, a build log. */
  log: (drv: string) => `log/${drv}`,
  /** `realisations/<id>.doi` or `build-trace-v2/<drv>/<output>.doi`, as in the request path. */
  realisation: (path: string) => path,
};

/** A document larger than allowed. */
export class DocumentTooLargeError extends Error {
  override name = 'DocumentTooLargeError';
}

/**
 * Side documents of the binary-cache protocol — NAR listings, build logs, realisations — kept in the
 * NarStore next to the NARs (a document's key is its `<dir>/<name>`). Writes are atomic, as for
 * NARs: a document appears whole or not at all. The flows that fetch documents from upstreams store
 * them here, and so can uploads.
 */
@Injectable()
export class DocumentStore {
  constructor(@Inject(NAR_STORE) private readonly store: NarStore) {}

  /** A stream of the stored document and its size, or null when it is not stored. */
  async open(key: string): Promise<{ body: Readable; size: number } | null> {
    const stat = await this.store.stat(key);
    if (!stat) return null;
    try {
      return { body: await this.store.read(key), size: stat.size };
    } catch (e) {
      if (e instanceof NotFoundError) return null; // removed in between
      throw e;
    }
  }

  /** The whole stored document (for small ones), or null. */
  async get(key: string, maxBytes: number): Promise<Buffer | null> {
    const stored = await this.open(key);
    if (!stored) return null;
    if (stored.size > maxBytes) {
      stored.body.destroy();
      throw new DocumentTooLargeError(`${key} is larger than ${maxBytes} bytes`);
    }
    const chunks: Buffer[] = [];
    for await (const chunk of stored.body as AsyncIterable<Buffer>) chunks.push(chunk);
    return Buffer.concat(chunks);
  }

  /**
   * Stores `body` under `key` (replacing what was there), streaming; nothing is stored if it fails
   * or grows beyond `maxBytes`. Resolves the number of bytes stored.
   */
  async put(
    key: string,
    body: Readable | Buffer,
    maxBytes = Number.MAX_SAFE_INTEGER,
  ): Promise<number> {
    if (Buffer.isBuffer(body)) {
      if (body.length > maxBytes)
        throw new DocumentTooLargeError(`${key} is larger than ${maxBytes} bytes`);
      await this.store.put(key, Readable.from([body]), body.length);
      return body.length;
    }
    let size = 0;
    const limited = new Transform({
      transform(chunk: Buffer, _encoding, done: TransformCallback) {
        size += chunk.length;
        if (size > maxBytes)
          done(new DocumentTooLargeError(`${key} is larger than ${maxBytes} bytes`));
        else done(null, chunk);
      },
    });
    body.once('error', (e) => limited.destroy(e));
    await this.store.put(key, body.pipe(limited));
    return size;
  }

  async delete(key: string): Promise<void> {
    await this.store.delete(key);
  }
}
