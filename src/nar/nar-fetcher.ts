import { Inject, Injectable, Logger } from '@nestjs/common';
import { DownloadFailedError, NarMismatchError, UpstreamUnavailableError } from '../common/errors';
import type { NarFileEntity } from '../database/entities';
import { NarFileRepository } from '../database/nar-file.repository';
import { MetricsService } from '../metrics/metrics.service';
import { RecentFailures } from '../metrics/recent-failures';
import { parseNarFileName } from '../nix/compression';
import { NAR_STORE, type NarStore } from '../storage/nar-store';
import { UpstreamService } from '../upstream/upstream.service';
import { NarSpool } from './nar-spool';
import { expectationsOf, NarVerifier, type NarExpectations } from './nar-verifier';

interface NarSource {
  row?: NarFileEntity;
  urls: string[];
  expect: NarExpectations;
}

/**
 * One upstream download of one NAR: find its source, open it, and — once clients can stream from
 * its spool — receive, verify and commit it in the background. The caller holds the NAR's lock
 * throughout.
 */
@Injectable()
export class NarFetcher {
  private readonly logger = new Logger('nar');

  constructor(
    @Inject(NAR_STORE) private readonly store: NarStore,
    private readonly files: NarFileRepository,
    private readonly upstream: UpstreamService,
    private readonly metrics: MetricsService,
    private readonly failures: RecentFailures,
  ) {}

  /**
   * Opens the upstream and returns the spool (clients may attach at once) and a promise that
   * settles when it is committed or discarded. Rejects if no upstream serves the NAR.
   */
  async start(
    name: string,
  ): Promise<{ spool: NarSpool; finished: Promise<boolean>; abort: (why: string) => void }> {
    const source = await this.resolveSource(name);
    const { url, body, length: upstreamLength } = await this.openUpstream(name, source.urls);
    const expect = source.expect;
    const spool = new NarSpool(name, this.store.spool, expect.fileSize ?? upstreamLength);
    const verifier = new NarVerifier(expect);
    if (!verifier.checksContent) {
      this.logger.warn(
        `${name}: ${expect.compression} NAR without FileHash cannot be verified; checking its size only`,
      );
    }
    const counted = this.metrics.countUpstreamBody(this.upstream.labelOf(url), body);
    const finished = this.complete(spool, verifier, counted, source, url);
    // Breaking the upstream body fails the download the normal way: readers break, spool deleted.
    const abort = (why: string) => body.destroy(new DownloadFailedError(why));
    return { spool, finished, abort };
  }

  /** Receives, verifies and commits; on any failure nothing is stored and every reader breaks. */
  private async complete(
    spool: NarSpool,
    verifier: NarVerifier,
    body: AsyncIterable<Buffer>,
    source: NarSource,
    url: string,
  ): Promise<boolean> {
    const name = spool.key;
    const began = Date.now();
    // Streaming stores (S3) upload while the download runs, from a reader that ends only once verified.
    const upload =
      this.store.writeMode === 'stream'
        ? this.store.put(name, spool.createReader(), spool.length)
        : null;
    upload?.catch(() => undefined); // awaited below; keep an early failure from counting as unhandled
    try {
      await spool.receive(body, verifier);
      if (upload) await upload;
      else await this.store.putFile(name, spool.path);
      if (source.row) await this.files.markStored(name, spool.written);
      else await this.files.recordStored(name, url, source.expect, spool.written);
      this.logger.log(`stored ${name} (${spool.written} bytes in ${Date.now() - began} ms)`);
      await spool.finishWriting(upload !== null);
      this.metrics.downloadFinished('stored');
      return true;
    } catch (e) {
      this.logger.warn(`discarded ${name}: ${(e as Error).message}`);
      this.failures.record(e instanceof NarMismatchError ? 'hash-mismatch' : 'download-failed', {
        upstream: this.upstream.upstreamOf(url)?.url ?? null,
        subject: `nar/${name}`,
        message: (e as Error).message,
      });
      spool.fail(e instanceof DownloadFailedError ? e : new DownloadFailedError(String(e)));
      await upload?.catch(() => undefined); // let an aborted upload finish cleaning up
      await spool.finishWriting(true);
      this.metrics.downloadFinished('discarded');
      return false;
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
  private async resolveSource(name: string): Promise<NarSource> {
    const row = await this.files.find(name);
    if (row) return { row, urls: [row.upstreamUrl], expect: expectationsOf(row) };
    // Asked for without a narinfo seen here (e.g. a client's long-cached narinfo after an eviction):
    // try `nar/<name>` on every upstream, trusting only bytes that hash to the FileHash in the name.
    const { hash, compression } = parseNarFileName(name);
    return {
      urls: this.upstream.upstreams.map((u) => u.urlFor(`nar/${name}`)),
      expect: { compression, fileHash: `sha256:${hash}` },
    };
  }
}
