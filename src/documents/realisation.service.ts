import { Inject, Injectable, Logger } from '@nestjs/common';
import { NotFoundError } from '../common/errors';
import { SingleFlight } from '../common/single-flight';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { MetricsService } from '../metrics/metrics.service';
import { NixFormatError } from '../nix/errors';
import { parseRealisation, parseRealisationPath, type RealisationPath } from '../nix/realisation';
import { parseSignature } from '../signing/keys';
import { SigningService } from '../signing/signing.service';
import { answerOfError, askUpstreams, type Answer } from '../upstream/ask-upstreams';
import type { UpstreamClient } from '../upstream/upstream-client';
import { UpstreamService } from '../upstream/upstream.service';
import { DocumentStore, documentKeys } from './document-store';

/** Largest realisation document accepted. */
export const MAX_REALISATION_BYTES = 64 * 1024;

/**
 * Realisations of content-addressed derivation outputs (`realisations/<id>.doi`,
 * `build-trace-v2/<drv>/<output>.doi`): passed through from the upstreams, checked as far as their
 * signatures allow, and kept. A document with a signature by a trusted upstream key that verifies
 * is accepted; one whose signatures name a trusted key but fail to verify is rejected (for the
 * `realisations/` form, whose signed fingerprint is known); one signed by no trusted key is passed
 * through for the client to judge (Nix checks realisation signatures against its own trusted keys).
 */
@Injectable()
export class RealisationService {
  private readonly logger = new Logger('realisation');
  private readonly fetching = new SingleFlight<string, Buffer | null>();
  private readonly trustedNames: Set<string>;

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    private readonly documents: DocumentStore,
    private readonly upstream: UpstreamService,
    private readonly signing: SigningService,
    private readonly metrics: MetricsService,
  ) {
    this.trustedNames = new Set(config.upstreamPublicKeys.map((k) => k.name));
  }

  /** The realisation document at `path` (without the leading slash); NotFoundError when none. */
  async get(path: string): Promise<Buffer> {
    const parsed = parseRealisationPath(path); // 400 for anything else
    const key = documentKeys.realisation(path);
    const stored = await this.documents.get(key, MAX_REALISATION_BYTES);
    if (stored) {
      this.metrics.documentRequest('realisation', 'hit');
      return stored;
    }
    const fetched = await this.fetching.run(path, () => this.fetch(path, parsed, key));
    if (!fetched) {
      this.metrics.documentRequest('realisation', 'not_found');
      throw new NotFoundError(`${path} not found`);
    }
    this.metrics.documentRequest('realisation', 'fetched');
    return fetched;
  }

  private async fetch(path: string, parsed: RealisationPath, key: string): Promise<Buffer | null> {
    const { found } = await askUpstreams(
      this.upstream.upstreams,
      (up, signal) => this.fetchChecked(up, path, parsed, signal),
      { hedge: this.config.upstreamHedge },
    );
    if (!found) return null;
    await this.documents.put(key, found.value, MAX_REALISATION_BYTES);
    this.logger.log(`cached ${path} from ${found.upstream.url}`);
    return found.value;
  }

  private async fetchChecked(
    up: UpstreamClient,
    path: string,
    parsed: RealisationPath,
    signal: AbortSignal,
  ): Promise<Answer<Buffer>> {
    let bytes: Buffer;
    try {
      bytes = await this.upstream.getBytes(up, path, {
        kind: 'realisation',
        signal,
        maxBytes: MAX_REALISATION_BYTES,
      });
    } catch (e) {
      return answerOfError(e);
    }
    const problem = this.problemWith(bytes, parsed);
    if (problem === undefined) return { kind: 'found', value: bytes };
    this.logger.warn(`${path} from ${up.url} ${problem}; ignored`);
    this.metrics.upstreamInvalid(up.url);
    return { kind: 'absent' };
  }

  /** Why a fetched realisation is rejected, or undefined when it is accepted. */
  private problemWith(bytes: Buffer, parsed: RealisationPath): string | undefined {
    let realisation;
    try {
      realisation = parseRealisation(bytes.toString('utf8'), parsed);
    } catch (e) {
      if (e instanceof NixFormatError) return `is malformed (${e.message})`;
      throw e;
    }
    const { signatures, fingerprints } = realisation;
    if (fingerprints.some((fp) => this.signing.verifiedByUpstream(fp, signatures)))
      return undefined;
    const byTrusted = signatures.filter((s) => {
      try {
        return this.trustedNames.has(parseSignature(s).keyName);
      } catch {
        return false;
      }
    });
    if (byTrusted.length > 0 && parsed.form === 'realisations') {
      return 'has a signature by a trusted key that does not verify';
    }
    return undefined;
  }
}
