import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { NotFoundError } from '../../src/common/errors';
import { S3NarStore } from '../../src/storage/s3/s3-nar-store';
import { generatedBody, keyOf, listAll } from './nar-store.contract';
import { startS3rverOrSkip, type S3rverFixture } from './s3rver';

// What the contract cannot see from outside a NarStore: which S3 requests an S3NarStore makes, where
// its objects land, and that a failed write leaves no multipart upload behind.

const MiB = 1024 * 1024;

describe('S3NarStore against s3rver', () => {
  let s3: S3rverFixture | null = null;
  let bucket: string;
  let spoolDir: string;
  let store: S3NarStore;
  let raw: S3Client;
  let sent: SentCommand[];

  beforeAll(async () => {
    s3 = await startS3rverOrSkip();
  });
  afterAll(async () => {
    await s3?.stop();
  });
  beforeEach(async (context) => {
    if (!s3) return context.skip();
    await s3.setAbortSupported(true);
    bucket = await s3.createBucket();
    spoolDir = await mkdtemp(join(tmpdir(), 'narwhal-s3-spool-'));
    store = new S3NarStore(s3.storageConfig(bucket, spoolDir, 'cache/'));
    await store.init();
    raw = s3.client();
    sent = recordCommands(store.client);
  });
  afterEach(async () => {
    if (!s3) return;
    await store.close();
    raw.destroy();
    await rm(spoolDir, { recursive: true, force: true });
  });

  function bucketKeys(): Promise<string[]> {
    return s3!.objectKeys(bucket);
  }

  it('keeps objects under <prefix>nar/ and leaves no probe behind', async () => {
    await store.put(keyOf(1), Readable.from([Buffer.from('one')]));
    await store.checkWritable();
    expect(await bucketKeys()).toEqual([`cache/nar/${keyOf(1)}`]);
  });

  it('aborts the multipart upload when the body fails, leaving no upload and no object', async () => {
    const failing = generatedBody(40 * MiB, 'aborted', { failAt: 20 * MiB });
    await expect(store.put(keyOf(2), failing)).rejects.toThrow('download failed half-way');

    const created = sent.filter((c) => c.name === 'CreateMultipartUploadCommand');
    expect(created).toHaveLength(1);
    expect(sent.filter((c) => c.name === 'UploadPartCommand').length).toBeGreaterThan(0);
    expect(sent.map((c) => c.name)).not.toContain('CompleteMultipartUploadCommand');
    const aborts = sent.filter((c) => c.name === 'AbortMultipartUploadCommand');
    expect(aborts).toEqual([
      { name: 'AbortMultipartUploadCommand', uploadId: created[0]?.uploadId, failed: false },
    ]);
    expect(await s3!.pendingUploads(bucket)).toEqual([]);
    expect(await bucketKeys()).toEqual([]);
  });

  it('checks the size before completing, so a short body never becomes an object', async () => {
    await expect(
      store.put(keyOf(3), generatedBody(17 * MiB, 'short'), 17 * MiB + 1),
    ).rejects.toThrow(`got ${17 * MiB} bytes, expected ${17 * MiB + 1}`);
    expect(sent.map((c) => c.name)).toContain('AbortMultipartUploadCommand');
    expect(sent.map((c) => c.name)).not.toContain('CompleteMultipartUploadCommand');
    expect(await s3!.pendingUploads(bucket)).toEqual([]);
    expect(await bucketKeys()).toEqual([]);
  });

  it('reports the body error even when the server refuses the abort', async () => {
    // Stock s3rver answers AbortMultipartUpload with MethodNotAllowed: the download's error must still
    // be the one reported.
    await s3!.setAbortSupported(false);
    const failing = generatedBody(40 * MiB, 'refused', { failAt: 20 * MiB });
    await expect(store.put(keyOf(4), failing)).rejects.toThrow('download failed half-way');
    expect(sent).toContainEqual(
      expect.objectContaining({ name: 'AbortMultipartUploadCommand', failed: true }),
    );
    // Still no object; the parts stay until a bucket lifecycle rule removes them.
    expect(await bucketKeys()).toEqual([]);
    expect(await s3!.pendingUploads(bucket)).toHaveLength(1);
  });

  it('sends a small object as one PutObject', async () => {
    await store.put(keyOf(5), generatedBody(MiB, 'small'), MiB);
    expect(sent.map((c) => c.name)).toEqual(['PutObjectCommand']);
  });

  it('lists past one page and skips objects that are not NAR files', async () => {
    const keys = Array.from({ length: 1005 }, (_, i) => keyOf(1000 + i));
    for (let i = 0; i < keys.length; i += 100) {
      await Promise.all(
        keys
          .slice(i, i + 100)
          .map((key) =>
            raw.send(new PutObjectCommand({ Bucket: bucket, Key: `cache/nar/${key}`, Body: key })),
          ),
      );
    }
    for (const stray of [
      'cache/nar/README',
      `cache/nar/sub/${keyOf(1)}`,
      `other/nar/${keyOf(2)}`,
    ]) {
      await raw.send(new PutObjectCommand({ Bucket: bucket, Key: stray, Body: 'x' }));
    }
    const listed = await listAll(store);
    expect(listed).toHaveLength(keys.length);
    expect(listed.map((e) => e.key)).toEqual([...keys].sort());
    expect(listed.every((e) => e.size === keyOf(0).length)).toBe(true);
    expect(sent.filter((c) => c.name === 'ListObjectsV2Command').length).toBeGreaterThan(1);
  });

  it('does not mistake a missing bucket for a missing object on read or write', async () => {
    const lost = new S3NarStore(s3!.storageConfig('narwhal-no-such-bucket', spoolDir));
    try {
      await expect(lost.checkWritable()).rejects.toMatchObject({ name: 'NoSuchBucket' });
      const read = lost.read(keyOf(6));
      await expect(read).rejects.toMatchObject({ name: 'NoSuchBucket' });
      await expect(read).rejects.not.toBeInstanceOf(NotFoundError);
    } finally {
      await lost.close();
    }
  });
});

interface SentCommand {
  name: string;
  uploadId?: string;
  failed: boolean;
}

/** Records every command the client sends (name, UploadId, whether it failed), in order. */
function recordCommands(client: S3Client): SentCommand[] {
  const sent: SentCommand[] = [];
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const entry: SentCommand = {
        name: context.commandName ?? '?',
        uploadId: (args.input as { UploadId?: string }).UploadId,
        failed: false,
      };
      if (entry.uploadId === undefined) delete entry.uploadId;
      sent.push(entry);
      try {
        const output = await next(args);
        if (entry.name === 'CreateMultipartUploadCommand') {
          entry.uploadId = (output.output as { UploadId?: string }).UploadId;
        }
        return output;
      } catch (e) {
        entry.failed = true;
        throw e;
      }
    },
    { step: 'initialize', name: 'narwhalTestRecordCommands' },
  );
  return sent;
}
