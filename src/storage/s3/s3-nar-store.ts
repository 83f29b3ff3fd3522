import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { Readable } from 'node:stream';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { Logger } from '@nestjs/common';
import { NotFoundError } from '../../common/errors';
import type { S3StorageConfig } from '../../config/app-config';
import type { NarStore } from '../nar-store';
import { isDocumentKey, isNarKey, NAR_KEY } from '../object-keys';
import { diskSpace, SpoolArea, type DiskSpace } from '../spool-area';
import { PartBufferPool, uploadObject } from './multipart-upload';

export interface S3NarStoreOptions {
  /** Multipart part size; S3's minimum is 5 MiB. */
  partSize?: number;
  /**
   * Parts uploaded at once. An upload holds at most queueSize + 1 part buffers (15 MiB with the
   * defaults); a download is rarely faster than two parts in flight.
   */
  queueSize?: number;
  /** Names this instance's spool files (see SpoolArea). */
  instance?: string;
}

/**
 * NARs as objects `<prefix>nar/<key>` in one bucket (side documents as `<prefix><dir>/<name>`). Writes stream from the download into a multipart
 * upload (bounded memory); an upload whose body fails is aborted, so no partial object ever appears.
 * Spools stay on local disk (the `spoolDir` of the storage settings).
 */
export class S3NarStore implements NarStore {
  readonly spool: SpoolArea;
  readonly writeMode = 'stream';
  readonly client: S3Client;
  private readonly bucket: string;
  private readonly objectsPrefix: string;
  private readonly prefix: string;
  private readonly probePrefix: string;
  private readonly partSize: number;
  private readonly queueSize: number;
  private readonly partBuffers: PartBufferPool;
  private readonly logger = new Logger(S3NarStore.name);

  constructor(config: S3StorageConfig, options: S3NarStoreOptions = {}) {
    this.spool = new SpoolArea(config.spoolDir, options.instance);
    this.bucket = config.bucket;
    this.prefix = config.prefix;
    this.objectsPrefix = `${config.prefix}nar/`;
    this.probePrefix = `${config.prefix}.narwhal-probe-`;
    this.partSize = options.partSize ?? 5 * 1024 * 1024;
    this.queueSize = options.queueSize ?? 2;
    // Enough idle buffers for one upload: the next one starts without allocating.
    this.partBuffers = new PartBufferPool(this.partSize, this.queueSize + 1);
    this.client = new S3Client({
      region: config.region,
      endpoint: config.endpoint,
      forcePathStyle: config.forcePathStyle,
      // Without static keys the SDK's default chain applies (env, profile, IMDS, web identity, …).
      credentials:
        config.accessKeyId !== undefined && config.secretAccessKey !== undefined
          ? { accessKeyId: config.accessKeyId, secretAccessKey: config.secretAccessKey }
          : undefined,
      // Reads hold a socket for as long as a client takes to download; the SDK's default of 50 would
      // let slow clients starve every other request.
      requestHandler: {
        connectionTimeout: 10_000,
        httpAgent: { keepAlive: true, maxSockets: 256 },
        httpsAgent: { keepAlive: true, maxSockets: 256 },
      },
    });
  }

  async init(): Promise<void> {
    await this.spool.init();
  }

  async localSpace(): Promise<DiskSpace[]> {
    return [await diskSpace('spool', this.spool.dir)];
  }

  /** Releases the client's sockets. */
  close(): Promise<void> {
    this.client.destroy();
    return Promise.resolve();
  }

  /** `<prefix>nar/<key>` for a NAR, `<prefix><dir>/<name>` for a side document. */
  objectKeyOf(key: string): string {
    if (isNarKey(key)) return this.objectsPrefix + key;
    if (isDocumentKey(key)) return this.prefix + key;
    throw new Error(`invalid storage key ${JSON.stringify(key)}`);
  }

  async stat(key: string): Promise<{ size: number } | null> {
    try {
      const head = await this.client.send(
        new HeadObjectCommand({ Bucket: this.bucket, Key: this.objectKeyOf(key) }),
      );
      return { size: head.ContentLength ?? 0 };
    } catch (e) {
      if (isNotFound(e)) return null;
      throw e;
    }
  }

  async read(key: string, range?: { start: number; end?: number }): Promise<Readable> {
    const objectKey = this.objectKeyOf(key);
    const res = await this.client
      .send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: objectKey,
          Range: range ? `bytes=${range.start}-${range.end ?? ''}` : undefined,
        }),
      )
      .catch((e: unknown) => {
        throw isNotFound(e) ? new NotFoundError(`${key} is not stored`) : e;
      });
    if (!(res.Body instanceof Readable)) {
      throw new Error(`${key}: S3 returned no readable body`);
    }
    return res.Body;
  }

  async putFile(key: string, spoolPath: string): Promise<void> {
    this.objectKeyOf(key); // validate before touching the spool
    const { size } = await stat(spoolPath);
    await this.put(key, createReadStream(spoolPath, { highWaterMark: 1024 * 1024 }), size);
    await rm(spoolPath, { force: true });
  }

  async put(
    key: string,
    body: Readable,
    size?: number,
    options: { alreadyStored?: () => Promise<boolean> } = {},
  ): Promise<void> {
    const objectKey = this.objectKeyOf(key);
    try {
      await uploadObject(
        {
          client: this.client,
          bucket: this.bucket,
          key: objectKey,
          contentType: 'application/x-nix-nar',
          partSize: this.partSize,
          queueSize: this.queueSize,
          buffers: this.partBuffers,
          size,
          alreadyStored: options.alreadyStored,
          // The object never appears either way; only the parts' storage leaks until a lifecycle
          // rule (AbortIncompleteMultipartUpload) removes them.
          onAbortFailed: (uploadId, e) =>
            this.logger.warn(
              `could not abort multipart upload ${uploadId} of ${objectKey}: ${e.message}`,
            ),
        },
        body,
      );
    } finally {
      if (!body.destroyed) body.destroy();
    }
  }

  async delete(key: string): Promise<void> {
    // S3 answers 204 for an absent key too.
    await this.client.send(
      new DeleteObjectCommand({ Bucket: this.bucket, Key: this.objectKeyOf(key) }),
    );
  }

  async *list(): AsyncIterable<{ key: string; size: number }> {
    let token: string | undefined;
    do {
      const page = await this.client.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: this.objectsPrefix,
          ContinuationToken: token,
        }),
      );
      for (const object of page.Contents ?? []) {
        const key = object.Key?.slice(this.objectsPrefix.length);
        // Like the filesystem store, skip anything that is not one of our object names.
        if (key !== undefined && NAR_KEY.test(key)) yield { key, size: object.Size ?? 0 };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  async checkWritable(): Promise<void> {
    const probe = `${this.probePrefix}${hostname()}-${process.pid}-${randomBytes(4).toString('hex')}`;
    await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: probe, Body: 'ok' }));
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: probe }));
  }
}

/** A missing object: GetObject says NoSuchKey; HeadObject has no body, so the SDK names it NotFound. */
function isNotFound(e: unknown): boolean {
  const name = (e as { name?: unknown } | null)?.name;
  return name === 'NoSuchKey' || name === 'NotFound';
}
