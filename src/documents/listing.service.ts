import { Inject, Injectable, Logger } from '@nestjs/common';
import { NotFoundError } from '../common/errors';
import { SingleFlight } from '../common/single-flight';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { NarFileRepository } from '../database/nar-file.repository';
import { NarInfoRepository } from '../database/narinfo.repository';
import { MetricsService } from '../metrics/metrics.service';
import { VerifierPool } from '../nar/verification/verifier-pool';
import { isCompression } from '../nix/compression';
import { canDecompress } from '../nix/decompress';
import { InvalidHashError, quoteForError } from '../nix/errors';
import { isNarListing } from '../nix/nar-listing';
import { isStorePathHash } from '../nix/store-path';
import { NAR_STORE, type NarStore } from '../storage/nar-store';
import { answerOfError, askUpstreams, type Answer } from '../upstream/ask-upstreams';
import type { UpstreamClient } from '../upstream/upstream-client';
import { UpstreamService } from '../upstream/upstream.service';
import { DocumentStore, documentKeys } from './document-store';

/** Largest listing accepted from an upstream or made here (a NAR of ~500k files). */
export const MAX_LISTING_BYTES = 64 * 1024 * 1024;

/**
 * `<hash>.ls`: the file listing of a store path's NAR (`nix store ls`, `nix store cat`, nix-index).
 * Served from storage when kept; otherwise the upstreams' own listing (asked like a narinfo, all at
 * once, highest priority first), else one generated from the NAR narwhal has stored — read as a
 * stream, decompressed and parsed, never held whole. Either is kept.
 */
@Injectable()
export class ListingService {
  private readonly logger = new Logger('listing');
  private readonly making = new SingleFlight<string, Buffer>();

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    @Inject(NAR_STORE) private readonly store: NarStore,
    private readonly documents: DocumentStore,
    private readonly upstream: UpstreamService,
    private readonly narInfos: NarInfoRepository,
    private readonly narFiles: NarFileRepository,
    private readonly threads: VerifierPool,
    private readonly metrics: MetricsService,
  ) {}

  /** The listing JSON for a store path hash; NotFoundError when there is none (yet). */
  async get(hash: string): Promise<Buffer> {
    if (!isStorePathHash(hash))
      throw new InvalidHashError(`invalid store path hash ${quoteForError(hash)}`);
    const key = documentKeys.listing(hash);
    const stored = await this.documents.get(key, MAX_LISTING_BYTES);
    if (stored) {
      this.metrics.documentRequest('listing', 'hit');
      return stored;
    }
    return this.making.run(hash, () => this.fetchOrMake(hash, key));
  }

  private async fetchOrMake(hash: string, key: string): Promise<Buffer> {
    const { found } = await askUpstreams(
      this.upstream.upstreams,
      (up, signal) => this.fetchListing(up, hash, signal),
      { hedge: this.config.upstreamHedge },
    );
    if (found) {
      await this.documents.put(key, found.value);
      this.logger.log(`cached ${hash}.ls from ${found.upstream.url}`);
      this.metrics.documentRequest('listing', 'fetched');
      return found.value;
    }
    const made = await this.generate(hash);
    if (!made) {
      this.metrics.documentRequest('listing', 'not_found');
      throw new NotFoundError(`${hash}.ls not found`);
    }
    await this.documents.put(key, made);
    this.logger.log(`made ${hash}.ls from the stored NAR`);
    this.metrics.documentRequest('listing', 'generated');
    return made;
  }

  /** One upstream's listing, if it is one. */
  private async fetchListing(
    up: UpstreamClient,
    hash: string,
    signal: AbortSignal,
  ): Promise<Answer<Buffer>> {
    let bytes: Buffer;
    try {
      bytes = await this.upstream.getBytes(up, `${hash}.ls`, {
        kind: 'listing',
        signal,
        maxBytes: MAX_LISTING_BYTES,
      });
    } catch (e) {
      return answerOfError(e);
    }
    try {
      if (isNarListing(JSON.parse(bytes.toString('utf8')))) return { kind: 'found', value: bytes };
    } catch {
      // not JSON: rejected below
    }
    this.logger.warn(`${hash}.ls from ${up.url} is not a NAR listing; ignored`);
    this.metrics.upstreamInvalid(up.url);
    return { kind: 'absent' };
  }

  /**
   * The listing of the stored NAR of `hash`, or null when its NAR is not stored (or not decodable).
   * The NAR is decompressed and parsed in a verifier thread, never on the event loop.
   */
  private async generate(hash: string): Promise<Buffer | null> {
    const info = await this.narInfos.find(hash);
    const file = info ? await this.narFiles.find(info.narKey) : null;
    if (!file || file.storedSize === null || !isCompression(file.compression)) return null;
    if (!canDecompress(file.compression)) return null; // bzip2, lz4, lzip: not decodable here
    let source;
    try {
      source = await this.store.read(file.key);
    } catch (e) {
      if (e instanceof NotFoundError) return null;
      throw e;
    }
    const lister = this.threads.listStream(file.compression);
    try {
      let size = 0;
      for await (const chunk of source as AsyncIterable<Buffer>) {
        size += chunk.length;
        await Promise.race([lister.write(chunk), lister.failed]);
      }
      const json = await lister.finish(size);
      if (json.length > MAX_LISTING_BYTES) return null;
      return Buffer.from(json);
    } catch (e) {
      // A stored file that is not a NAR (it matched its hashes all the same), or storage failing.
      lister.abandon();
      this.logger.warn(`cannot list ${file.key}: ${(e as Error).message}`);
      return null;
    } finally {
      source.destroy();
    }
  }
}
