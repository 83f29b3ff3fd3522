import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import type { S3StorageConfig } from '../../src/config/app-config';

const CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };
const REGION = 'us-east-1';
const START_TIMEOUT_MS = 15_000;

/**
 * A real s3rver 3 on 127.0.0.1 (random port, own temp directory) in a child process, which the S3
 * store talks to over HTTP. A child process because:
 * - s3rver makes ListObjectsV2 continuation tokens with single DES, which OpenSSL 3 only has in its
 *   legacy provider (`--openssl-legacy-provider`); without it every truncated listing is a 500;
 * - the store's memory use can then be measured without the server's.
 *
 * s3rver 3 also lacks AbortMultipartUpload (it answers MethodNotAllowed). The child adds it the way
 * S3 does it (discard the parts; NoSuchUpload if unknown); `setAbortSupported(false)` switches back to
 * stock behaviour. Parts live in `<directory>/<bucket>/._S3rver_uploads/<uploadId>/`, which is how
 * `pendingUploads` sees uploads that were neither completed nor aborted.
 */
export class S3rverFixture {
  private requests = 0;

  private constructor(
    private readonly child: ChildProcess,
    readonly directory: string,
    readonly endpoint: string,
  ) {}

  static async start(): Promise<S3rverFixture> {
    const directory = await mkdtemp(join(tmpdir(), 'narwhal-s3rver-'));
    const s3rverPath = createRequire(__filename).resolve('s3rver');
    const child = spawn(
      process.execPath,
      ['--openssl-legacy-provider', '-e', CHILD_SCRIPT, s3rverPath, directory],
      { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] },
    );
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      const port = await new Promise<number>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('timed out')), START_TIMEOUT_MS);
        child.once('message', (m: { port?: number; error?: string }) => {
          clearTimeout(timer);
          if (m.port) resolve(m.port);
          else reject(new Error(m.error ?? 'no port'));
        });
        child.once('error', reject);
        child.once('exit', (code) => {
          clearTimeout(timer);
          reject(
            new Error(`exited with ${code}: ${stderr.trim().split('\n').slice(-3).join(' ')}`),
          );
        });
      });
      child.removeAllListeners('exit');
      return new S3rverFixture(child, directory, `http://127.0.0.1:${port}`);
    } catch (e) {
      child.kill();
      await rm(directory, { recursive: true, force: true });
      throw e;
    }
  }

  /** Whether AbortMultipartUpload works (true, like S3) or is refused (false, like stock s3rver). */
  async setAbortSupported(supported: boolean): Promise<void> {
    const seq = ++this.requests;
    const acked = new Promise<void>((resolve) => {
      const onMessage = (m: { ack?: number }) => {
        if (m.ack !== seq) return;
        this.child.off('message', onMessage);
        resolve();
      };
      this.child.on('message', onMessage);
    });
    this.child.send({ seq, abortSupported: supported });
    await acked;
  }

  /** Creates an empty bucket through the S3 API and returns its name. */
  async createBucket(): Promise<string> {
    const bucket = `narwhal-${randomBytes(4).toString('hex')}`;
    const client = this.client();
    try {
      await client.send(new CreateBucketCommand({ Bucket: bucket }));
    } finally {
      client.destroy();
    }
    return bucket;
  }

  /** Storage settings for `bucket`, as the config loader would produce them. */
  storageConfig(bucket: string, spoolDir: string, prefix = ''): S3StorageConfig {
    return {
      kind: 's3',
      bucket,
      endpoint: this.endpoint,
      region: REGION,
      ...CREDENTIALS,
      forcePathStyle: true,
      prefix,
      spoolDir,
    };
  }

  /** A separate client, for looking at the bucket behind the store's back. */
  client(): S3Client {
    return new S3Client({
      region: REGION,
      endpoint: this.endpoint,
      forcePathStyle: true,
      credentials: CREDENTIALS,
    });
  }

  /** The keys of the objects in `bucket` (one listing page: up to 1000), sorted. */
  async objectKeys(bucket: string): Promise<string[]> {
    const client = this.client();
    try {
      const page = await client.send(new ListObjectsV2Command({ Bucket: bucket }));
      return (page.Contents ?? []).map((o) => o.Key ?? '').sort();
    } finally {
      client.destroy();
    }
  }

  /** Multipart uploads of `bucket` that were neither completed nor aborted. */
  async pendingUploads(bucket: string): Promise<string[]> {
    return readdir(join(this.directory, bucket, '._S3rver_uploads')).catch(
      (e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return [];
        throw e;
      },
    );
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null) {
      const exited = once(this.child, 'exit');
      this.child.kill();
      await exited;
    }
    await rm(this.directory, { recursive: true, force: true });
  }
}

/**
 * Starts s3rver, or returns null after a loud warning so the S3 suites can be skipped. On CI
 * (`CI=true`) a failure to start is an error: the suites must not silently disappear there.
 */
export async function startS3rverOrSkip(): Promise<S3rverFixture | null> {
  try {
    return await S3rverFixture.start();
  } catch (e) {
    const reason = (e as Error).message;
    if (process.env.CI === 'true') {
      throw new Error(
        `The S3 storage suites need s3rver (CI=true), which did not start: ${reason}`,
      );
    }
    console.warn(
      `\n*** SKIPPING the S3 storage suites: s3rver did not start (${reason}).\n` +
        '*** Run `npm ci` to install it; on CI this is an error.\n',
    );
    return null;
  }
}

/** The child: argv = [s3rver module path, directory]; reports `{ port }` over IPC once listening. */
const CHILD_SCRIPT = `
const [s3rverPath, directory] = process.argv.slice(1);
const fs = require('node:fs/promises');
const path = require('node:path');
const S3rver = require(s3rverPath);
const behaviour = { abortSupported: true };
const NO_SUCH_UPLOAD = '<?xml version="1.0" encoding="UTF-8"?>\\n<Error><Code>NoSuchUpload</Code>' +
  '<Message>The specified upload does not exist.</Message></Error>';
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory });
// DELETE /<bucket>/<key>?uploadId=... (AbortMultipartUpload). Added before run(): Koa composes its
// middleware when it starts listening.
server.middleware.unshift(async (ctx, next) => {
  const uploadId = ctx.query.uploadId;
  if (ctx.method !== 'DELETE' || typeof uploadId !== 'string' || !behaviour.abortSupported) {
    return next();
  }
  const bucket = ctx.path.split('/')[1] || '';
  const dir = path.join(directory, bucket, '._S3rver_uploads', uploadId);
  const known = /^[0-9a-f]+$/.test(uploadId) && /^[a-z0-9.-]+$/.test(bucket) &&
    (await fs.stat(dir).then((s) => s.isDirectory(), () => false));
  if (!known) {
    ctx.status = 404;
    ctx.type = 'application/xml';
    ctx.body = NO_SUCH_UPLOAD;
    return;
  }
  await fs.rm(dir, { recursive: true, force: true });
  ctx.status = 204;
});
process.on('message', (m) => {
  behaviour.abortSupported = m.abortSupported;
  process.send({ ack: m.seq });
});
process.on('disconnect', () => process.exit(0));
server.run().then(
  ({ port }) => process.send({ port }),
  (e) => { process.send({ error: String(e && e.message) }); process.exit(1); },
);
`;
