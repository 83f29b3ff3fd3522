import { Inject, Injectable, Logger } from '@nestjs/common';
import { DatabaseUnavailableError, NotFoundError } from '../common/errors';
import { SingleFlight } from '../common/single-flight';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { DatabaseHealth } from '../database/database-health';
import type { NarInfoEntity } from '../database/entities';
import { NarInfoRepository, TOUCH_GRANULARITY_MS } from '../database/narinfo.repository';
import { narInfoLockKey } from '../locking/lock-keys';
import { NOTICES, type Notices } from '../locking/notices';
import { TakeoverLocks } from '../instances/takeover-locks';
import { MetricsService } from '../metrics/metrics.service';
import { StoredNarCheck } from '../nar/stored-nar-check';
import { RecentFailures } from '../metrics/recent-failures';
import { narFileName } from '../nix/compression';
import { InvalidHashError, quoteForError } from '../nix/errors';
import { narInfoFingerprint } from '../nix/fingerprint';
import { parseNixHash, sha256Nix32 } from '../nix/hash';
import { parseNarInfo, serializeNarInfo, type NarInfo } from '../nix/narinfo';
import { isStorePathHash, parseStorePath } from '../nix/store-path';
import { SigningService } from '../signing/signing.service';
import { answerOfError, askUpstreams, type Answer } from '../upstream/ask-upstreams';
import type { UpstreamClient } from '../upstream/upstream-client';
import { UpstreamService } from '../upstream/upstream.service';
import { NarInfoEvents } from './narinfo-events';
import { NegativeCache } from './negative-cache';

interface RecentNarInfo {
  text: string;
  /** `text` as the bytes sent (encoded once). */
  body: Buffer;
  narKey: string;
  touchedAt: number;
  until: number;
  /** True while the database is being asked whether it is still stored (see recentBytes). */
  checking?: boolean;
}

/** How long a served narinfo is answered from memory (an eviction elsewhere shows after at most this). */
const RECENT_TTL_MS = 30_000;
/**
 * How long past RECENT_TTL_MS a narinfo served lately is still answered from memory by the hot path,
 * while the database is asked again in the background (see recentBytes).
 */
export const RECENT_STALE_MS = 10 * 60_000;
const RECENT_MAX = 20_000;
/** The notice that tells every instance to forget a narinfo it may remember (it was deleted). */
const FORGET_TOPIC = 'narinfo-forget';
/** Most hashes remembered as missing (~150 bytes each: 14 MB measured for 100,000). */
export const NEGATIVE_MAX = 100_000;

/** What a lookup found: a stored row, or nothing (`definite` when every upstream said so). */
interface LookupResult {
  row: NarInfoEntity | null;
  definite: boolean;
  /** True when this lookup fetched the row from an upstream (false: it was stored already). */
  fetched?: boolean;
}

/** What a prefetch lookup did: known already (skipped), found stored, fetched, or found nowhere. */
export type NarInfoPrefetchResult = 'known' | 'stored' | 'fetched' | 'not_found';

/**
 * The narinfo request flow: hit → serve from the database; a hash every upstream recently said it
 * lacks → 404 from the negative cache; miss → under the lock for the hash, ask the upstreams (all at
 * once, see askUpstreams), accept the highest-priority answer whose signature verifies against a
 * trusted upstream key, store it, and serve it rewritten to narwhal's own NAR URL and signed by
 * narwhal.
 */
@Injectable()
export class NarInfoService {
  private readonly logger = new Logger('narinfo');
  /** Narinfos served lately, as rendered: hits skip the database for RECENT_TTL_MS. */
  private readonly recent = new Map<string, RecentNarInfo>();
  /** Concurrent local misses of one hash share one lookup (including a 404 answer). */
  private readonly lookups = new SingleFlight<string, LookupResult>();
  /** Hashes every upstream said it lacks, for --cache-negative-ttl. */
  private readonly misses: NegativeCache;

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    private readonly locks: TakeoverLocks,
    private readonly repo: NarInfoRepository,
    private readonly db: DatabaseHealth,
    private readonly upstream: UpstreamService,
    private readonly signing: SigningService,
    private readonly storedNars: StoredNarCheck,
    private readonly metrics: MetricsService,
    private readonly failures: RecentFailures,
    @Inject(NOTICES) private readonly notices: Notices,
    private readonly events: NarInfoEvents,
  ) {
    this.misses = new NegativeCache(config.negativeTtlMs, NEGATIVE_MAX);
    metrics.watchNegativeCache(() => this.misses.size);
    notices.subscribe(FORGET_TOPIC, (hash) => this.recent.delete(hash));
  }

  /**
   * Forgets that `hash` was missing upstream, so that the next request looks again (for a path
   * that has just been uploaded or stored by other means).
   */
  forgetMiss(hash: string): void {
    this.misses.forget(hash);
  }

  /**
   * Forgets the narinfo of `hash` on every instance: the ones served lately are answered from
   * memory for up to 30 s, which must not outlive a delete. This instance forgets it at once, the
   * others when the notice reaches them (through Redis, within milliseconds); if it cannot be sent
   * (Redis unreachable), their memory still expires within 30 s.
   */
  async forgetEverywhere(hash: string): Promise<void> {
    this.recent.delete(hash);
    try {
      await this.notices.publish(FORGET_TOPIC, hash);
    } catch (e) {
      this.logger.warn(
        `could not tell the other instances to forget ${hash}.narinfo (${(e as Error).message}); they forget it within ${RECENT_TTL_MS / 1000} s`,
      );
    }
  }

  /**
   * The hot path of a hit (see HotHits): the bytes of a narinfo this instance served lately, without
   * touching the database; undefined for anything else (the caller then goes through get()).
   */
  recentBytes(hash: string): Buffer | undefined {
    const cached = this.recent.get(hash);
    if (!cached) return undefined;
    const now = Date.now();
    if (cached.until <= now) {
      // Past its TTL but asked for within RECENT_STALE_MS of it: answered now, checked after. A
      // closure asked for again a few minutes later stays on the hot path; what a stale answer can
      // get wrong is one more answer for a narinfo deleted elsewhere whose notice was lost.
      if (now >= cached.until + RECENT_STALE_MS) return undefined;
      this.checkStillStored(hash, cached);
    }
    this.metrics.narInfoRequest('hit');
    this.touchIfStale(hash, cached, now);
    return cached.body;
  }

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
    let row: NarInfoEntity | null;
    try {
      row = await this.repo.find(hash);
    } catch (e) {
      // While the database is down, narinfos served lately are still answered from memory.
      if (!this.db.noteFailure(e)) throw e;
      if (!cached)
        throw new DatabaseUnavailableError(`${hash}.narinfo: the database is unavailable`);
      this.metrics.narInfoRequest('hit');
      return cached.text;
    }
    const stored = row !== null;
    if (!row && this.misses.has(hash)) {
      this.metrics.negativeCacheHit();
      this.metrics.narInfoRequest('not_found');
      throw new NotFoundError(`${hash}.narinfo not found`);
    }
    if (!row) row = (await this.lookupOnce(hash)).row;
    this.metrics.narInfoRequest(stored ? 'hit' : row ? 'miss' : 'not_found');
    if (!row) throw new NotFoundError(`${hash}.narinfo not found`);
    this.events.asked({ hash, narKey: row.narKey, upstreamUrl: row.upstreamUrl });
    const entry = this.entryOf(row, this.render(row));
    this.touchIfStale(hash, entry, now);
    this.remember(hash, entry);
    return entry.text;
  }

  /**
   * Asks the database, in the background, for a narinfo answered from memory past its TTL: the
   * entry is renewed (as its row renders now) when it is still stored, and forgotten when not. While
   * the database cannot be asked, the entry stays as it is and the next hit asks again.
   */
  private checkStillStored(hash: string, cached: RecentNarInfo): void {
    if (cached.checking) return;
    cached.checking = true;
    this.repo
      .find(hash)
      .then(
        (row) => {
          if (this.recent.get(hash) !== cached) return; // forgotten or replaced meanwhile
          if (!row) {
            this.recent.delete(hash);
            return;
          }
          const text = this.render(row);
          if (text === cached.text) cached.until = Date.now() + RECENT_TTL_MS;
          else this.recent.set(hash, { ...this.entryOf(row, text), touchedAt: cached.touchedAt });
        },
        (e: Error) => {
          if (!this.db.noteFailure(e)) this.logger.warn(`checking ${hash}.narinfo: ${e.message}`);
        },
      )
      .finally(() => (cached.checking = false));
  }

  /** A fresh memory entry for `row`, rendered as `text`. */
  private entryOf(row: NarInfoEntity, text: string): RecentNarInfo {
    return {
      text,
      body: Buffer.from(text),
      narKey: row.narKey,
      touchedAt: row.lastAccessedAt,
      until: Date.now() + RECENT_TTL_MS,
    };
  }

  /** Records the access in the database at most once per TOUCH_GRANULARITY_MS per narinfo. */
  private touchIfStale(hash: string, entry: RecentNarInfo, now: number): void {
    if (now - entry.touchedAt < TOUCH_GRANULARITY_MS) return;
    entry.touchedAt = now;
    this.repo.touch(hash, entry.narKey, now).catch((e: Error) => {
      if (!this.db.noteFailure(e)) this.logger.warn(`touch ${hash}: ${e.message}`);
    });
  }

  private remember(hash: string, entry: RecentNarInfo): void {
    this.recent.delete(hash);
    this.recent.set(hash, entry);
    if (this.recent.size > RECENT_MAX)
      this.recent.delete(this.recent.keys().next().value as string);
  }

  /**
   * A lookup started by the prefetcher, not by a client: the very lookup of a client miss (under
   * the hash's lock, verified, remembered in the negative cache), which a client asking meanwhile
   * joins. Skipped when the hash is known: served lately, remembered as missing, or being looked
   * up. `signal` (shutdown) stops it before anything is stored.
   */
  async prefetch(hash: string, signal?: AbortSignal): Promise<NarInfoPrefetchResult> {
    if (this.recent.has(hash) || this.misses.has(hash) || this.lookups.has(hash)) return 'known';
    const { row, fetched } = await this.lookupOnce(hash, signal);
    return !row ? 'not_found' : fetched ? 'fetched' : 'stored';
  }

  private lookupOnce(hash: string, signal?: AbortSignal): Promise<LookupResult> {
    return this.lookups.run(hash, async () => {
      const result = await this.locks.withLock(
        narInfoLockKey(hash),
        this.config.lock.downloadTtlMs,
        'narinfo',
        () => this.lookup(hash, signal),
      );
      if (result.row) this.misses.forget(hash);
      else if (result.definite) this.misses.add(hash);
      return result;
    });
  }

  private async lookup(hash: string, stop?: AbortSignal): Promise<LookupResult> {
    const existing = await this.repo.find(hash); // stored by another holder while we waited
    if (existing) return { row: existing, definite: true };
    const { found, allAbsent } = await askUpstreams(
      this.upstream.upstreams,
      (up, signal) => this.fetchVerified(up, hash, stop ? AbortSignal.any([signal, stop]) : signal),
      { hedge: this.config.upstreamHedge },
    );
    if (stop?.aborted) return { row: null, definite: false };
    if (!found) return { row: null, definite: allAbsent };
    const { upstream: up, value: narInfo } = found;
    const narKey = narKeyOf(narInfo);
    // narwhal's own signature is made now and stored with the row (no write when first served).
    const row = await this.repo.save({
      hash,
      narInfo,
      narKey,
      upstreamUrl: up.url,
      narUpstreamUrl: up.resolveNarUrl(narInfo.url),
      ownSignature: this.signing.enabled
        ? `${this.signing.publicKey}|${this.signing.sign(narInfoFingerprint(narInfo, this.config.storeDir))}`
        : undefined,
    });
    // A NAR stored before this narinfo (fetched by name) must match what the narinfo signs.
    await this.storedNars.adopt(narKey, narInfo.narHash, narInfo.narSize);
    this.logger.log(`cached ${hash}.narinfo from ${up.url}`);
    this.events.fetched({ hash, references: narInfo.references, upstreamUrl: up.url });
    return { row, definite: true, fetched: true };
  }

  /**
   * One upstream's narinfo for `hash` if it is well-formed, for that path, and validly signed; an
   * answer that is not counts as "not here".
   */
  private async fetchVerified(
    up: UpstreamClient,
    hash: string,
    signal: AbortSignal,
  ): Promise<Answer<NarInfo>> {
    let text: string;
    try {
      text = await this.upstream.getText(up, `${hash}.narinfo`, { signal });
    } catch (e) {
      if (!signal.aborted) {
        this.logger.debug(`${hash}.narinfo from ${up.url}: ${this.upstream.describeError(e)}`);
      }
      return answerOfError(e);
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
    return { kind: 'found', value: narInfo };
  }

  /** An upstream's narinfo is not accepted: logged, counted and shown on the status page. */
  private rejected(
    up: UpstreamClient,
    hash: string,
    kind: 'invalid-narinfo' | 'bad-signature',
    why: string,
  ): Answer<NarInfo> {
    this.logger.warn(`${hash}.narinfo from ${up.url} ignored: ${why}`);
    this.metrics.upstreamInvalid(up.url);
    this.failures.record(kind, { upstream: up.url, subject: `${hash}.narinfo`, message: why });
    return { kind: 'absent' };
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
    this.repo.setOwnSignature(row.hash, prefix + sig).catch((e: Error) => {
      if (!this.db.noteFailure(e))
        this.logger.warn(`caching signature of ${row.hash}: ${e.message}`);
    });
    return sig;
  }
}

/** narwhal's name for the NAR: its FileHash when known, else its NarHash, plus the extension. */
export function narKeyOf(n: NarInfo): string {
  const hash = n.fileHash ?? n.narHash;
  return narFileName(sha256Nix32(parseNixHash(hash).digest), n.compression);
}
