import { Inject, Injectable, Logger } from '@nestjs/common';
import { NotFoundError } from '../common/errors';
import { SingleFlight } from '../common/single-flight';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import type { NarInfoEntity } from '../database/entities';
import { NarInfoRepository, TOUCH_GRANULARITY_MS } from '../database/narinfo.repository';
import { narInfoLockKey } from '../locking/lock-keys';
import { LOCKER, withLock, type Locker } from '../locking/locker';
import { MetricsService } from '../metrics/metrics.service';
import { RecentFailures } from '../metrics/recent-failures';
import { narFileName } from '../nix/compression';
import { InvalidHashError, quoteForError } from '../nix/errors';
import { narInfoFingerprint } from '../nix/fingerprint';
import { parseNixHash, sha256Nix32 } from '../nix/hash';
import { parseNarInfo, serializeNarInfo, type NarInfo } from '../nix/narinfo';
import { isStorePathHash, parseStorePath } from '../nix/store-path';
import { SigningService } from '../signing/signing.service';
import type { UpstreamClient } from '../upstream/upstream-client';
import { UpstreamService } from '../upstream/upstream.service';

interface RecentNarInfo {
  text: string;
  narKey: string;
  touchedAt: number;
  until: number;
}

/** How long a served narinfo is answered from memory (an eviction elsewhere shows after at most this). */
const RECENT_TTL_MS = 30_000;
const RECENT_MAX = 20_000;

/**
 * The narinfo request flow: hit → serve from the database; miss → under the lock for the hash, ask the
 * upstreams in priority order, accept the first answer whose signature verifies against a trusted
 * upstream key, store it, and serve it rewritten to narwhal's own NAR URL and signed by narwhal.
 */
@Injectable()
export class NarInfoService {
  private readonly logger = new Logger('narinfo');
  /** Narinfos served lately, as rendered: hits skip the database for RECENT_TTL_MS. */
  private readonly recent = new Map<string, RecentNarInfo>();
  /** Concurrent local misses of one hash share one lookup (including a 404 answer). */
  private readonly lookups = new SingleFlight<string, NarInfoEntity | null>();

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    @Inject(LOCKER) private readonly locker: Locker,
    private readonly repo: NarInfoRepository,
    private readonly upstream: UpstreamService,
    private readonly signing: SigningService,
    private readonly metrics: MetricsService,
    private readonly failures: RecentFailures,
  ) {}

  /** The narinfo text for a store path hash; NotFoundError when no upstream has a valid one. */
  async get(hash: string): Promise<string> {
    if (!isStorePathHash(hash))
      throw new InvalidHashError(`invalid store path hash ${quoteForError(hash)}`);
    const now = Date.now();
    const cached = this.recent.get(hash);
    if (cached && cached.until > now) {
      this.metrics.narInfoRequest('hit');
      this.touchIfStale(hash, cached, now);
      return cached.text;
    }
    let row = await this.repo.find(hash);
    const stored = row !== null;
    if (!row) row = await this.lookupOnce(hash);
    this.metrics.narInfoRequest(stored ? 'hit' : row ? 'miss' : 'not_found');
    if (!row) throw new NotFoundError(`${hash}.narinfo not found`);
    const entry = {
      text: this.render(row),
      narKey: row.narKey,
      touchedAt: row.lastAccessedAt,
      until: now + RECENT_TTL_MS,
    };
    this.touchIfStale(hash, entry, now);
    this.remember(hash, entry);
    return entry.text;
  }

  /** Records the access in the database at most once per TOUCH_GRANULARITY_MS per narinfo. */
  private touchIfStale(hash: string, entry: RecentNarInfo, now: number): void {
    if (now - entry.touchedAt < TOUCH_GRANULARITY_MS) return;
    entry.touchedAt = now;
    this.repo
      .touch(hash, entry.narKey, now)
      .catch((e: Error) => this.logger.warn(`touch ${hash}: ${e.message}`));
  }

  private remember(hash: string, entry: RecentNarInfo): void {
    this.recent.delete(hash);
    this.recent.set(hash, entry);
    if (this.recent.size > RECENT_MAX)
      this.recent.delete(this.recent.keys().next().value as string);
  }

  private lookupOnce(hash: string): Promise<NarInfoEntity | null> {
    return this.lookups.run(hash, () => {
      const locked = this.metrics.lockTimer('narinfo');
      return withLock(this.locker, narInfoLockKey(hash), this.config.lock.downloadTtlMs, () => {
        locked();
        return this.lookup(hash);
      });
    });
  }

  private async lookup(hash: string): Promise<NarInfoEntity | null> {
    const existing = await this.repo.find(hash); // stored by another holder while we waited
    if (existing) return existing;
    for (const up of this.upstream.upstreams) {
      const narInfo = await this.fetchVerified(up, hash);
      if (!narInfo) continue;
      await this.repo.save({
        hash,
        narInfo,
        narKey: narKeyOf(narInfo),
        upstreamUrl: up.url,
        narUpstreamUrl: up.resolveNarUrl(narInfo.url),
      });
      this.logger.log(`cached ${hash}.narinfo from ${up.url}`);
      return this.repo.find(hash);
    }
    return null;
  }

  /** One upstream's narinfo for `hash` if it is well-formed, for that path, and validly signed. */
  private async fetchVerified(up: UpstreamClient, hash: string): Promise<NarInfo | null> {
    let text: string;
    try {
      text = await this.upstream.getText(up, `${hash}.narinfo`);
    } catch (e) {
      this.logger.debug(`${hash}.narinfo from ${up.url}: ${this.upstream.describeError(e)}`);
      return null;
    }
    let narInfo: NarInfo;
    try {
      narInfo = parseNarInfo(text, { storeDir: this.config.storeDir });
    } catch (e) {
      return this.rejected(up, hash, 'invalid-narinfo', `malformed: ${(e as Error).message}`);
    }
    if (parseStorePath(narInfo.storePath, this.config.storeDir).hash !== hash) {
      return this.rejected(
        up,
        hash,
        'invalid-narinfo',
        `describes another path (${narInfo.storePath})`,
      );
    }
    const fingerprint = narInfoFingerprint(narInfo, this.config.storeDir);
    if (!this.signing.verifiedByUpstream(fingerprint, narInfo.sigs)) {
      return this.rejected(up, hash, 'bad-signature', 'no signature by a trusted upstream key');
    }
    return narInfo;
  }

  /** An upstream's narinfo is not accepted: logged, counted and shown on the status page. */
  private rejected(
    up: UpstreamClient,
    hash: string,
    kind: 'invalid-narinfo' | 'bad-signature',
    why: string,
  ): null {
    this.logger.warn(`${hash}.narinfo from ${up.url} ignored: ${why}`);
    this.metrics.upstreamInvalid(up.url);
    this.failures.record(kind, { upstream: up.url, subject: `${hash}.narinfo`, message: why });
    return null;
  }

  /** The narinfo as served: narwhal's NAR URL, upstream signatures kept, narwhal's own added. */
  private render(row: NarInfoEntity): string {
    const narInfo: NarInfo = {
      storePath: row.storePath,
      url: `nar/${row.narKey}`,
      compression: row.compression as NarInfo['compression'],
      fileHash: row.fileHash ?? undefined,
      fileSize: row.fileSize ?? undefined,
      narHash: row.narHash,
      narSize: row.narSize,
      references: row.references.map((r) => r.reference),
      deriver: row.deriver ?? undefined,
      system: row.system ?? undefined,
      sigs: row.signatures.map((s) => s.signature),
      ca: row.ca ?? undefined,
    };
    if (this.signing.enabled) {
      const own = `${this.signing.keyName}:`;
      narInfo.sigs = narInfo.sigs.filter((s) => !s.startsWith(own));
      narInfo.sigs.push(this.ownSignature(row, narInfo));
    }
    return serializeNarInfo(narInfo);
  }

  /** narwhal's signature, made once per narinfo and key (cached as `<public key>|<sig>`). */
  private ownSignature(row: NarInfoEntity, narInfo: NarInfo): string {
    const prefix = `${this.signing.publicKey}|`;
    if (row.ownSignature?.startsWith(prefix)) return row.ownSignature.slice(prefix.length);
    const sig = this.signing.sign(narInfoFingerprint(narInfo, this.config.storeDir));
    this.repo
      .setOwnSignature(row.hash, prefix + sig)
      .catch((e: Error) => this.logger.warn(`caching signature of ${row.hash}: ${e.message}`));
    return sig;
  }
}

/** narwhal's name for the NAR: its FileHash when known, else its NarHash, plus the extension. */
export function narKeyOf(n: NarInfo): string {
  const hash = n.fileHash ?? n.narHash;
  return narFileName(sha256Nix32(parseNixHash(hash).digest), n.compression);
}
