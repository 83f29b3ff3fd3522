import { Inject, Injectable, Logger } from '@nestjs/common';
import {
  DownloadFailedError,
  InsufficientStorageError,
  NarMismatchError,
  NarTooLargeError,
  UpstreamUnavailableError,
} from '../common/errors';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import type { NarFileEntity } from '../database/entities';
import { NarFileRepository } from '../database/nar-file.repository';
import { isUploadOrigin } from '../database/upload-origin';
import { MetricsService } from '../metrics/metrics.service';
import { RecentFailures } from '../metrics/recent-failures';
import { parseNarFileName } from '../nix/compression';
import { NAR_STORE, type NarStore } from '../storage/nar-store';
import { UpstreamService } from '../upstream/upstream.service';
import { asDownloadError, NarSpool } from './nar-spool';
import { checksContent, expectationsOf, type NarExpectations } from './nar-verifier';
import { VerifierPool } from './verification/verifier-pool';

interface NarSource {
  row?: NarFileEntity;
  urls: string[];
  expect: NarExpectations;
}

/**
 * How long a NAR that decompressed past its NarSize (a bomb) is answered 502 at once instead of
 * being fetched and decoded again. Other bad bytes are fetched again at the next request (the
 * upstream may have been fixed).
 */
export const FAILED_NAR_MEMORY_MS = 60_000;
const FAILED_NAR_MAX = 10_000;

/**
 * One upstream download of one NAR: find its source, open it, and — once clients can stream from
 * its spool — receive, verify (in a verifier thread) and commit it in the background. The caller
 * holds the NAR's lock throughout.
 */
@Injectable()
export class NarFetcher {
  private readonly logger = new Logger('nar');
  /** NARs that turned out to be bombs lately: a storm of requests does not repeat the work. */
  private readonly failedLately = new Map<string, { until: number; why: string }>();

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    @Inject(NAR_STORE) private readonly store: NarStore,
    private readonly files: NarFileRepository,
    private readonly upstream: UpstreamService,
    private readonly verifiers: VerifierPool,
    private readonly metrics: MetricsService,
    private readonly failures: RecentFailures,
  ) {}

  /**
   * Opens the upstream and returns the spool (clients may attach at once) and a promise that
   * settles when it is committed or discarded. Rejects if no upstream serves the NAR, or at once
   * (DownloadFailedError) if it turned out to be a decompression bomb within the last minute.
   * `row` is the NAR's row as the caller read it under the lock (null: there is none); without it,
   * the row is looked up here.
   */
  async start(
    name: string,
    row?: NarFileEntity | null,
  ): Promise<{ spool: NarSpool; finished: Promise<boolean>; abort: (why: string) => void }> {
    const failed = this.failedLately.get(name);
    if (failed && failed.until > Date.now()) {
      throw new DownloadFailedError(`${name} was refused lately: ${failed.why}`);
    }
    const source = await this.resolveSource(name, row);
    const expect = source.expect;
    const spool = new NarSpool(name, this.store.spool, expect.fileSize);
    void spool.open(); // the spool file is made while the upstream answers
    const {
      url,
      body,
      length: upstreamLength,
    } = await this.openUpstream(name, source.urls).catch(async (e: unknown) => {
      await spool.finishWriting(true); // no upstream has it: the new spool file goes again
      throw e;
    });
    spool.length ??= upstreamLength;
    if (!checksContent(expect)) {
      this.logger.warn(
        `${name}: ${expect.compression} NAR without FileHash cannot be verified; checking its size only`,
      );
    }
    // Aborted before the spool reads the body (a shutdown right after the start), the body's error
    // must not go unhandled (an uncaught exception); reading it later still throws it.
    body.on('error', () => undefined);
    const counted = this.metrics.countUpstreamBody(this.upstream.labelOf(url), body);
    // Breaking the upstream body fails the download the normal way: readers break, spool deleted.
    const abort = (why: string) => body.destroy(new DownloadFailedError(why));
    const finished = this.complete(spool, counted, source, url, abort);
    return { spool, finished, abort };
  }

  /** Receives, verifies and commits; on any failure nothing is stored and every reader breaks. */
  private async complete(
    spool: NarSpool,
    body: AsyncIterable<Buffer>,
    source: NarSource,
    url: string,
    abort: (why: string) => void,
  ): Promise<boolean> {
    const name = spool.key;
    const began = Date.now();
    // Streaming stores (S3) upload while the download runs, from a reader that ends only once verified.
    // A holder that was paused past its lease finds the NAR stored by the instance that took over:
    // then it does not make the object again (its own clients still get their bytes).
    const alreadyStored = async () => (await this.files.find(name))?.storedSize != null;
    const upload =
      this.store.writeMode === 'stream'
        ? this.store.put(name, spool.createReader(), spool.length, { alreadyStored })
        : null;
    upload?.catch(() => undefined); // awaited below; keep an early failure from counting as unhandled
    const stopWatching = this.watchRate(spool, abort);
    try {
      await spool.receive(body, this.verifiers.checkSpool(spool.path, source.expect, spool.length));
      stopWatching();
      let spoolLeft = upload !== null;
      if (upload) await upload;
      else if (await alreadyStored()) spoolLeft = true;
      else await spool.commitTo(this.store);
      if (source.row) await this.files.markStored(name, spool.written);
      else await this.files.recordStored(name, url, source.expect, spool.written);
      this.logger.log(`stored ${name} (${spool.written} bytes in ${Date.now() - began} ms)`);
      await spool.finishWriting(spoolLeft);
      this.metrics.downloadFinished('stored');
      return true;
    } catch (e) {
      stopWatching();
      abort('download discarded'); // stop the transfer if it still runs (e.g. bytes found wrong)
      const error = asDownloadError(e);
      if (error instanceof InsufficientStorageError) {
        this.logger.error(`discarded ${name}: ${error.message}`);
      } else {
        this.logger.warn(`discarded ${name}: ${error.message}`);
      }
      if (error instanceof NarTooLargeError) this.rememberFailure(name, error.message);
      spool.fail(error);
      this.failures.record(
        error instanceof NarMismatchError ? 'hash-mismatch' : 'download-failed',
        {
          upstream: this.upstream.upstreamOf(url)?.url ?? null,
          subject: `nar/${name}`,
          message: error.message,
        },
      );
      await upload?.catch(() => undefined); // let an aborted upload finish cleaning up
      await spool.finishWriting(true);
      this.metrics.downloadFinished('discarded');
      return false;
    }
  }

  /**
   * Abandons a transfer slower than --cache-upstream-min-rate, averaged over each window of
   * --cache-upstream-body-timeout: an upstream dripping a byte a second never pauses long enough for
   * the body timeout, yet would hold the download, and every client on it, indefinitely.
   */
  private watchRate(spool: NarSpool, abort: (why: string) => void): () => void {
    const { minRate, bodyMs: windowMs } = this.config.upstreamTimeouts;
    if (minRate <= 0) return () => undefined;
    let last = spool.written;
    const timer = setInterval(() => {
      const rate = ((spool.written - last) * 1000) / windowMs;
      last = spool.written;
      if (spool.received || spool.state !== 'streaming') return;
      if (rate < minRate) {
        abort(`upstream too slow: ${Math.round(rate)} B/s, below --cache-upstream-min-rate`);
      }
    }, windowMs);
    timer.unref();
    return () => clearInterval(timer);
  }

  private rememberFailure(name: string, why: string): void {
    const now = Date.now();
    if (this.failedLately.size >= FAILED_NAR_MAX) {
      for (const [k, v] of this.failedLately) if (v.until <= now) this.failedLately.delete(k);
      if (this.failedLately.size >= FAILED_NAR_MAX) this.failedLately.clear();
    }
    this.failedLately.set(name, { until: now + FAILED_NAR_MEMORY_MS, why });
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

  /**
   * Where the bytes of `name` come from and what they must hash to, from its row: `known` when the
   * caller has just read it (null: there is none), else looked up here.
   */
  private async resolveSource(name: string, known?: NarFileEntity | null): Promise<NarSource> {
    const row = known !== undefined ? known : await this.files.find(name);
    // An uploaded NAR no longer in storage is nowhere to be fetched (the caller answers 404).
    const urls = row && !isUploadOrigin(row.upstreamUrl) ? [row.upstreamUrl] : [];
    if (row) return { row, urls, expect: expectationsOf(row) };
    // Asked for without a narinfo seen here (e.g. a client's long-cached narinfo after an eviction):
    // try `nar/<name>` on every upstream, trusting only bytes that hash to the FileHash in the name.
    const { hash, compression } = parseNarFileName(name);
    return {
      urls: this.upstream.upstreams.map((u) => u.urlFor(`nar/${name}`)),
      expect: { compression, fileHash: `sha256:${hash}` },
    };
  }
}
