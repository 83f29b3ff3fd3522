import { Inject, Injectable, Logger, type OnApplicationShutdown } from '@nestjs/common';
import { timingSafeEqual } from 'node:crypto';
import type { Readable } from 'node:stream';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { SigningService } from '../signing/signing.service';
import { discard, HttpClient } from '../upstream/http-client';
import { contentRange, type ByteRange } from './byte-range';

/** A download another instance runs that this one streams to its own clients right now. */
export interface PeerStream {
  name: string;
  /** The URL the other instance advertises in the NAR's lock. */
  peerUrl: string;
  /** When this stream began (epoch ms). */
  startedAt: number;
  /** Length of the NAR file, when known. */
  length?: number;
}

/** Path under which an instance serves the downloads it is running to its peers. */
export const PEER_DOWNLOADS_PATH = '_narwhal/downloads';

/**
 * Streams a NAR that another narwhal instance is downloading right now, from that instance's
 * in-flight download (`GET <peer>/_narwhal/downloads/<name>`), so a client of this instance gets its
 * first byte without waiting for the other instance to finish.
 *
 * Only instances of the deployment may use that endpoint: they send a secret derived from the
 * signing key they all share, and it is off altogether without Redis locks (one instance).
 */
@Injectable()
export class PeerClient implements OnApplicationShutdown {
  private readonly logger = new Logger('peer');
  private readonly http: HttpClient;
  /** Whether the peer endpoint is served (several instances share locks through Redis). */
  readonly enabled: boolean;
  private readonly authorization: Buffer;
  /** Peer streams open now (for the status page). */
  private readonly streaming = new Set<PeerStream>();

  constructor(@Inject(APP_CONFIG) config: AppConfig, signing: SigningService) {
    this.enabled = config.lock.kind === 'redis';
    // The peer answers at once when it has the download; one that sends nothing for seconds is
    // paused or gone, and the caller then looks at the lock again.
    this.http = new HttpClient({
      ...config.upstreamTimeouts,
      headersMs: Math.min(3_000, config.upstreamTimeouts.headersMs),
    });
    this.authorization = Buffer.from(`Bearer ${signing.derivedSecret('peer-downloads')}`);
  }

  /** True when `header` (an Authorization header) is another instance's, compared in constant time. */
  accepts(header: string | undefined): boolean {
    if (!this.enabled || header === undefined) return false;
    const given = Buffer.from(header);
    return given.length === this.authorization.length && timingSafeEqual(given, this.authorization);
  }

  /**
   * The peer's stream of `name` (or of `ranged.range` of the `ranged.length` bytes), or null if the
   * peer is not (or no longer) downloading it or cannot give exactly that range.
   */
  async open(
    peerUrl: string,
    name: string,
    ranged?: { range: ByteRange; length: number },
  ): Promise<{ body: Readable; length?: number; range?: ByteRange } | null> {
    if (!/^https?:\/\//.test(peerUrl)) return null;
    try {
      const res = await this.http.request(`${peerUrl}/${PEER_DOWNLOADS_PATH}/${name}`, {
        headers: {
          authorization: this.authorization.toString(),
          ...(ranged ? { range: `bytes=${ranged.range.start}-${ranged.range.end}` } : {}),
        },
      });
      const ok = ranged
        ? res.status === 206 &&
          res.headers['content-range'] === contentRange(ranged.range, ranged.length)
        : res.status === 200;
      if (!ok) {
        await discard(res.body);
        return null;
      }
      this.track(res.body, {
        name,
        peerUrl,
        startedAt: Date.now(),
        length: ranged?.length ?? res.length,
      });
      if (ranged) return { body: res.body, ...ranged };
      return { body: res.body, length: res.length };
    } catch (e) {
      this.logger.debug(`peer ${peerUrl} unreachable for ${name}: ${(e as Error).message}`);
      return null;
    }
  }

  /** The peer streams open now, oldest first (copies). */
  streams(): PeerStream[] {
    return [...this.streaming].map((s) => ({ ...s }));
  }

  /** Keeps `stream` listed until its body closes (ends, breaks or is abandoned). */
  private track(body: Readable, stream: PeerStream): void {
    this.streaming.add(stream);
    body.once('close', () => this.streaming.delete(stream));
  }

  async onApplicationShutdown(): Promise<void> {
    await this.http.close();
  }
}
