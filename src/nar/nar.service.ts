import { Inject, Injectable, Logger, type OnModuleInit } from '@nestjs/common';
import { readdir, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { DownloadFailedError, NotFoundError, UpstreamUnavailableError } from '../common/errors';
import type { NarFileEntity } from '../database/entities';
import { NarFileRepository } from '../database/nar-file.repository';
import { LOCKER, withLock, type Locker } from '../locking/locker';
import { parseNarFileName, type Compression } from '../nix/compression';
import { NAR_STORE, type NarStore } from '../storage/nar-store';
import { UpstreamService } from '../upstream/upstream.service';
import { NarDownload } from './nar-download';
import { NarVerifier, type NarExpectations } from './nar-verifier';

/** What the controller streams to one client. */
export interface NarResponse {
  body: Readable;
  length?: number;
  source: 'storage' | 'download';
}

const DOWNLOAD_LOCK_TTL_MS = 5 * 60_000;
const STALE_SPOOL_MS = 10 * 60_000;

/**
 * The NAR download flow: serve from storage when stored; otherwise one upstream download per NAR,
 * streamed to every client that asks while it runs, verified, and only then committed to storage.
 */
@Injectable()
export class NarService implements OnModuleInit {
  private readonly logger = new Logger('nar');
  /** In-flight downloads by NAR name; null once it turned out to be stored already. */
  private readonly inflight = new Map<string, Promise<NarDownload | null>>();

  constructor(
    @Inject(NAR_STORE) private readonly store: NarStore,
    @Inject(LOCKER) private readonly locker: Locker,
    private readonly files: NarFileRepository,
    private readonly upstream: UpstreamService,
  ) {}

  /** Removes spool files left by a crash (never visible as objects, but they take space). */
  async onModuleInit(): Promise<void> {
    const now = Date.now();
    for (const name of await readdir(this.store.spoolDir).catch(() => [] as string[])) {
      if (!name.endsWith('.part')) continue;
      const p = join(this.store.spoolDir, name);
      const s = await stat(p).catch(() => null);
      if (s && now - s.mtimeMs > STALE_SPOOL_MS) await unlink(p).catch(() => undefined);
    }
  }

  get downloadsInFlight(): number {
    return this.inflight.size;
  }

  /** GET: a stream of the NAR, from storage or from the (shared) in-flight download. */
  async get(name: string): Promise<NarResponse> {
    parseNarFileName(name); // 400 for anything that is not a NAR file name
    // A download can finish between our looks at storage and at the in-flight map; then look again.
    for (let attempt = 0; attempt < 3; attempt++) {
      const stored = await this.openStored(name);
      if (stored) return stored;
      const download = await this.download(name);
      const body = download?.tryCreateReader();
      if (download && body) return { body, length: download.length, source: 'download' };
    }
    throw new UpstreamUnavailableError(`${name} could not be served`);
  }

  /** HEAD: the size if the NAR is stored or can be fetched, without downloading it. */
  async head(name: string): Promise<{ length?: number }> {
    parseNarFileName(name);
    const row = await this.files.find(name);
    if (row?.storedSize != null) {
      const s = await this.store.stat(name);
      if (s) return { length: s.size };
    }
    const inflight = this.inflight.get(name);
    const download = inflight ? await inflight : null;
    if (download) return { length: download.length };
    if (!row) throw new NotFoundError(`${name} is not known`);
    try {
      const { length } = await this.upstream.open(row.upstreamUrl, 'HEAD');
      return { length: row.fileSize ?? length };
    } catch (e) {
      this.logger.debug(`HEAD ${name}: ${this.upstream.describeError(e)}`);
      throw new UpstreamUnavailableError(`${name} is not available upstream`);
    }
  }

  private async openStored(name: string): Promise<NarResponse | null> {
    const row = await this.files.find(name);
    if (row?.storedSize == null) return null;
    try {
      const body = await this.store.read(name);
      this.files.touch(name).catch((e: Error) => this.logger.warn(`touch ${name}: ${e.message}`));
      return { body, length: row.storedSize, source: 'storage' };
    } catch (e) {
      if (!(e instanceof NotFoundError)) throw e;
      this.logger.warn(`${name} is recorded as stored but missing from storage; fetching it again`);
      await this.files.markMissing(name);
      return null;
    }
  }

  /** The in-flight download of `name`, started if needed; resolves once bytes are flowing. */
  private download(name: string): Promise<NarDownload | null> {
    let pending = this.inflight.get(name);
    if (!pending) {
      pending = this.startDownload(name);
      this.inflight.set(name, pending);
      pending.catch(() => this.inflight.delete(name));
    }
    return pending;
  }

  /**
   * Resolves with the download as soon as the upstream answered 200 (clients start streaming then);
   * the rest of the download continues in the background under the lock.
   */
  private startDownload(name: string): Promise<NarDownload | null> {
    return new Promise<NarDownload | null>((resolveStarted, rejectStarted) => {
      let started = false;
      const work = withLock(this.locker, `nar:${name}`, DOWNLOAD_LOCK_TTL_MS, async () => {
        const source = await this.resolveSource(name);
        if (!source) throw new NotFoundError(`${name} is not known`);
        const row = source.row;
        if (row?.storedSize != null && (await this.store.stat(name))) {
          // Another holder stored it while we waited for the lock.
          this.inflight.delete(name);
          started = true;
          resolveStarted(null);
          return;
        }
        const { url, body, length: upstreamLength } = await this.openUpstream(name, source.urls);
        const expect = source.expect;
        const download = new NarDownload(
          name,
          this.store.spoolDir,
          expect.fileSize ?? upstreamLength,
        );
        const verifier = new NarVerifier(expect);
        if (!verifier.checksContent) {
          this.logger.warn(
            `${name}: ${expect.compression} NAR without FileHash cannot be verified; checking its size only`,
          );
        }
        started = true;
        resolveStarted(download);
        await this.complete(download, verifier, body as AsyncIterable<Buffer>, source, url);
      });
      work.catch((e: unknown) => {
        this.inflight.delete(name);
        if (!started) rejectStarted(e instanceof Error ? e : new Error(String(e)));
        else this.logger.error(`download of ${name}: ${(e as Error).message}`);
      });
    });
  }

  /** Receives, verifies and commits one download; on any failure nothing is stored and readers break. */
  private async complete(
    download: NarDownload,
    verifier: NarVerifier,
    body: AsyncIterable<Buffer>,
    source: NarSource,
    url: string,
  ): Promise<void> {
    const name = download.key;
    const began = Date.now();
    // Streaming stores (S3) upload while the download runs, from a reader that ends only once verified.
    const upload =
      this.store.writeMode === 'stream'
        ? this.store.put(name, download.createReader(), download.length)
        : null;
    upload?.catch(() => undefined); // awaited below; keep an early failure from counting as unhandled
    try {
      await download.receive(body, verifier);
      if (upload) await upload;
      else await this.store.putFile(name, download.spoolPath);
      if (source.row) await this.files.markStored(name, download.written);
      else await this.files.recordStored(name, url, source.expect, download.written);
      this.logger.log(`stored ${name} (${download.written} bytes in ${Date.now() - began} ms)`);
      this.inflight.delete(name);
      await download.finishWriting(upload !== null);
    } catch (e) {
      this.logger.warn(`discarded ${name}: ${(e as Error).message}`);
      download.fail(e instanceof DownloadFailedError ? e : new DownloadFailedError(String(e)));
      await upload?.catch(() => undefined); // let an aborted upload finish cleaning up
      this.inflight.delete(name);
      await download.finishWriting(true);
    }
  }

  private async openUpstream(name: string, urls: string[]) {
    for (const url of urls) {
      try {
        return { url, ...(await this.upstream.open(url)) };
      } catch (e) {
        this.logger.debug(`${name}: ${this.upstream.describeError(e)}`);
      }
    }
    throw new UpstreamUnavailableError(`${name}: no upstream has it`);
  }

  /** Where the bytes of `name` come from and what they must hash to. */
  private async resolveSource(name: string): Promise<NarSource | null> {
    const row = await this.files.find(name);
    if (row) {
      return {
        row,
        urls: [row.upstreamUrl],
        expect: {
          compression: row.compression as Compression,
          fileHash: row.fileHash ?? undefined,
          fileSize: row.fileSize ?? undefined,
          narHash: row.narHash,
          narSize: row.narSize,
        },
      };
    }
    // Asked for without a narinfo seen here (e.g. a client's long-cached narinfo after an eviction):
    // try `nar/<name>` on every upstream, trusting only bytes that hash to the FileHash in the name.
    const { hash, compression } = parseNarFileName(name);
    return {
      urls: this.upstream.upstreams.map((u) => this.upstream.urlFor(u, `nar/${name}`)),
      expect: { compression, fileHash: `sha256:${hash}` },
    };
  }
}

interface NarSource {
  row?: NarFileEntity;
  urls: string[];
  expect: NarExpectations;
}
