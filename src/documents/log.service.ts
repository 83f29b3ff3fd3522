import { Inject, Injectable, Logger } from '@nestjs/common';
import type { IncomingHttpHeaders } from 'node:http';
import { pipeline, type Readable } from 'node:stream';
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';
import { NotFoundError } from '../common/errors';
import { SingleFlight } from '../common/single-flight';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { MetricsService } from '../metrics/metrics.service';
import { parseStorePathBaseName } from '../nix/store-path';
import { discard } from '../upstream/http-client';
import { answerOfError, askUpstreams, type Answer } from '../upstream/ask-upstreams';
import type { UpstreamClient } from '../upstream/upstream-client';
import { UpstreamService, type UpstreamBody } from '../upstream/upstream.service';
import { DocumentStore, documentKeys } from './document-store';

/** Largest build log kept (after removing its transport encoding). */
export const MAX_LOG_BYTES = 1024 * 1024 * 1024;

/**
 * `/log/<drv>`: build logs (`nix log`). Served from storage when kept; otherwise fetched from the
 * upstreams (the highest-priority one that has it), with any transport encoding (brotli, gzip —
 * cache.nixos.org keeps logs brotli-encoded) removed, streamed into storage and then served from
 * there: a log is never held in memory, and a broken download leaves nothing behind.
 */
@Injectable()
export class LogService {
  private readonly logger = new Logger('log');
  private readonly fetching = new SingleFlight<string, boolean>();

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    private readonly documents: DocumentStore,
    private readonly upstream: UpstreamService,
    private readonly metrics: MetricsService,
  ) {}

  /** The stored build log of `drv` (a store path base name); NotFoundError when no upstream has it. */
  async open(drv: string): Promise<{ body: Readable; size: number }> {
    parseStorePathBaseName(drv); // 400 for anything else
    const key = documentKeys.log(drv);
    const stored = await this.documents.open(key);
    if (stored) {
      this.metrics.documentRequest('log', 'hit');
      return stored;
    }
    if (await this.fetching.run(drv, () => this.fetch(drv, key))) {
      const fetched = await this.documents.open(key);
      if (fetched) {
        this.metrics.documentRequest('log', 'fetched');
        return fetched;
      }
    }
    this.metrics.documentRequest('log', 'not_found');
    throw new NotFoundError(`log/${drv} not found`);
  }

  /** Fetches the log from the upstreams into storage; false when none has it. */
  private async fetch(drv: string, key: string): Promise<boolean> {
    const { found } = await askUpstreams(
      this.upstream.upstreams,
      (up, signal) => this.openLog(up, drv, signal),
      { hedge: this.config.upstreamHedge, discard: (body) => void discard(body.body) },
    );
    if (!found) return false;
    const { upstream: up, value } = found;
    try {
      const bytes = await this.documents.put(key, decoded(value), MAX_LOG_BYTES);
      this.logger.log(`cached log/${drv} from ${up.url} (${bytes} bytes)`);
      return true;
    } catch (e) {
      this.logger.warn(`log/${drv} from ${up.url}: ${(e as Error).message}`);
      return false;
    }
  }

  private async openLog(
    up: UpstreamClient,
    drv: string,
    signal: AbortSignal,
  ): Promise<Answer<UpstreamBody>> {
    try {
      const body = await this.upstream.open(up.urlFor(`log/${drv}`), 'GET', 'log', signal);
      if (decoderFor(body.headers) === undefined) {
        await discard(body.body);
        this.logger.warn(`log/${drv} from ${up.url} has an unknown Content-Encoding; ignored`);
        return { kind: 'absent' };
      }
      return { kind: 'found', value: body };
    } catch (e) {
      return answerOfError(e);
    }
  }
}

type Decoder = (() => NodeJS.ReadWriteStream) | null;

/** The decoder for a response's Content-Encoding: null for none, undefined for an unknown one. */
function decoderFor(headers: IncomingHttpHeaders | undefined): Decoder | undefined {
  const encoding = String(headers?.['content-encoding'] ?? '')
    .trim()
    .toLowerCase();
  switch (encoding) {
    case '':
    case 'identity':
      return null;
    case 'br':
      return createBrotliDecompress;
    case 'gzip':
    case 'x-gzip':
      return createGunzip;
    case 'deflate':
      return createInflate;
    default:
      return undefined;
  }
}

/** The body without its transport encoding, as a stream. */
function decoded({ body, headers }: UpstreamBody): Readable {
  const make = decoderFor(headers);
  if (!make) return body;
  const decoder = make() as unknown as Readable;
  pipeline(body, decoder as unknown as NodeJS.WritableStream, () => undefined);
  return decoder;
}
