import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe } from 'vitest';
import { FilesystemNarStore } from '../../src/storage/filesystem/filesystem-nar-store';
import { S3NarStore } from '../../src/storage/s3/s3-nar-store';
import { narStoreContract } from './nar-store.contract';
import { startS3rverOrSkip, type S3rverFixture } from './s3rver';

// The same contract, unchanged, against every NarStore implementation.

narStoreContract('FilesystemNarStore', async () => {
  const root = await mkdtemp(join(tmpdir(), 'narwhal-fs-store-'));
  const store = new FilesystemNarStore(root);
  await store.init();
  return { store, cleanup: () => rm(root, { recursive: true, force: true }) };
});

describe('S3 (s3rver over HTTP)', () => {
  // One s3rver for the file, a fresh bucket (and spool directory) for every test.
  let s3: S3rverFixture | null = null;
  beforeAll(async () => {
    s3 = await startS3rverOrSkip();
  });
  afterAll(async () => {
    await s3?.stop();
  });
  beforeEach((context) => {
    if (!s3) context.skip();
  });

  narStoreContract('S3NarStore', async () => {
    if (!s3) throw new Error('unreachable: every test is skipped without s3rver');
    const spoolDir = await mkdtemp(join(tmpdir(), 'narwhal-s3-spool-'));
    const store = new S3NarStore(s3.storageConfig(await s3.createBucket(), spoolDir, 'cache/'));
    await store.init();
    return {
      store,
      cleanup: async () => {
        await store.close();
        await rm(spoolDir, { recursive: true, force: true });
      },
    };
  });
});
