import { Inject, Injectable, Logger } from '@nestjs/common';
import type { IncomingMessage } from 'node:http';
import {
  ConflictError,
  InsufficientStorageError,
  NarMismatchError,
  UploadRejectedError,
} from '../common/errors';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { DocumentStore, documentKeys } from '../documents/document-store';
import { MAX_LISTING_BYTES } from '../documents/listing.service';
import { MAX_LOG_BYTES } from '../documents/log.service';
import { MAX_REALISATION_BYTES } from '../documents/realisation.service';
import { NarFileRepository } from '../database/nar-file.repository';
import { NarInfoRepository } from '../database/narinfo.repository';
import { uploadOrigin } from '../database/upload-origin';
import { TakeoverLocks } from '../instances/takeover-locks';
import { documentLockKey, narInfoLockKey, narLockKey } from '../locking/lock-keys';
import { MetricsService, type UploadKind } from '../metrics/metrics.service';
import { NarSpool } from '../nar/nar-spool';
import { StoredNarCheck } from '../nar/stored-nar-check';
import { VerifierPool } from '../nar/verification/verifier-pool';
import { NarInfoService } from '../narinfo/narinfo.service';
import { parseNarFileName } from '../nix/compression';
import { InvalidHashError, NixFormatError, quoteForError } from '../nix/errors';
import { isNarListing } from '../nix/nar-listing';
import type { NarInfo } from '../nix/narinfo';
import { parseRealisation, parseRealisationPath } from '../nix/realisation';
import { isStorePathHash, parseStorePathBaseName } from '../nix/store-path';
import { verifyFingerprint, type PublicKey } from '../signing/keys';
import { NAR_STORE, type NarStore } from '../storage/nar-store';
import { declaredLength, readUpload, uploadBody } from './upload-body';
import { parseUploadedNarInfo, sameNarInfo } from './uploaded-narinfo';

/** What an upload did: stored it, or found the very same already here (nothing changed). */
export type UploadOutcome = 'stored' | 'exists';

/** Largest narinfo accepted (as from an upstream). */
const MAX_NARINFO_BYTES = 1024 * 1024;
const MAX_CACHE_INFO_BYTES = 64 * 1024;

/**
 * The upload protocol as `nix copy --to http://…` speaks it, every byte verified before it is kept:
 *
 * - `PUT /nar/<file>`: the NAR, streamed into a spool and into storage (never held in memory) while a
 *   verifier thread hashes it; kept only if it hashes to the FileHash its name carries.
 * - `PUT /<hash>.narinfo` (last): accepted only if it describes the path its name says, its NAR is
 *   stored here and matches its FileHash/FileSize and — decompressed — its NarHash/NarSize, and (with
 *   --cache-require-trusted-signature) it carries a trusted signature. A different narinfo already
 *   here is never replaced (409): delete it first.
 * - `PUT /<hash>.ls`, `/log/<drv>`, `/realisations/<id>.doi`, `/build-trace-v2/…`: side documents,
 *   checked for what they are.
 *
 * Bodies may carry a Content-Encoding (Nix's `*-compression` settings); it is removed first.
 */
@Injectable()
export class UploadService {
  private readonly logger = new Logger('upload');
  /** Keys an uploaded narinfo or realisation may be signed by. */
  private readonly trustedKeys: PublicKey[];

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    @Inject(NAR_STORE) private readonly store: NarStore,
    private readonly files: NarFileRepository,
    private readonly narInfoRows: NarInfoRepository,
    private readonly documents: DocumentStore,
    private readonly verifiers: VerifierPool,
    private readonly locks: TakeoverLocks,
    private readonly storedNars: StoredNarCheck,
    private readonly narInfos: NarInfoService,
    private readonly metrics: MetricsService,
  ) {
    this.trustedKeys = [...config.upstreamPublicKeys, ...config.access.uploadPublicKeys];
  }

  /** `PUT /nix-cache-info` (Nix sends it to a cache that has none): checked, not kept. */
  async cacheInfo(req: IncomingMessage): Promise<void> {
    const text = (
      await readUpload(req, {
        what: 'nix-cache-info',
        maxBytes: MAX_CACHE_INFO_BYTES,
        idleMs: this.idleMs,
      })
    ).toString('utf8');
    const storeDir = /^StoreDir:\s*(\S+)\s*$/m.exec(text)?.[1];
    if (storeDir !== undefined && storeDir !== this.config.storeDir) {
      throw new UploadRejectedError(
        `nix-cache-info: StoreDir ${storeDir} is not this cache's ${this.config.storeDir}`,
      );
    }
  }

  /** `PUT /nar/<name>`: see the class. */
  nar(name: string, req: IncomingMessage, who: string): Promise<UploadOutcome> {
    return this.counted('nar', async () => {
      const { hash, compression } = parseNarFileName(name); // 400 for anything else
      const what = `nar/${name}`;
      const ttl = this.config.lock.downloadTtlMs;
      return this.locks.withLock(narLockKey(name), ttl, 'nar', async () => {
        const row = await this.files.find(name);
        if (row?.storedSize != null && (await this.store.stat(name))) return 'exists';
        // The name's hash is the FileHash: that is what the bytes are checked against.
        const expect = { compression, fileHash: `sha256:${hash}` };
        const spool = new NarSpool(name, this.store.spool, declaredLength(req));
        const body = uploadBody(req, {
          what,
          maxBytes: Number.MAX_SAFE_INTEGER,
          idleMs: this.idleMs,
        });
        let bodyError: Error | undefined;
        body.once('error', (e) => (bodyError = e));
        // Streaming stores (S3) take the bytes as they arrive; the source ends only once verified.
        const upload =
          this.store.writeMode === 'stream'
            ? this.store.put(name, spool.createReader(), spool.length)
            : null;
        upload?.catch(() => undefined); // awaited below
        try {
          await spool.receive(body, this.verifiers.checkSpool(spool.path, expect, spool.length));
          if (upload) await upload;
          else await spool.commitTo(this.store);
          await this.files.recordStored(name, uploadOrigin(who), expect, spool.written);
          await spool.finishWriting(upload !== null);
        } catch (e) {
          spool.fail(e as Error);
          await upload?.catch(() => undefined); // an aborted multipart upload cleans up first
          await spool.finishWriting(true);
          throw this.uploadError(what, req, bodyError ?? e);
        }
        this.logger.log(`stored ${what} (${spool.written} bytes) uploaded with token "${who}"`);
        return 'stored';
      });
    });
  }

  /** `PUT /<hash>.narinfo`: see the class. */
  narInfo(hash: string, req: IncomingMessage, who: string): Promise<UploadOutcome> {
    return this.counted('narinfo', async () => {
      checkHash(hash);
      const what = `${hash}.narinfo`;
      const body = await readUpload(req, {
        what,
        maxBytes: MAX_NARINFO_BYTES,
        idleMs: this.idleMs,
      });
      const { narInfo, narKey } = parseUploadedNarInfo(hash, body.toString('utf8'), {
        storeDir: this.config.storeDir,
        trustedKeys: this.config.access.requireTrustedSignature ? this.trustedKeys : undefined,
      });
      const ttl = this.config.lock.downloadTtlMs;
      // The lock of a lookup of this hash too: no upstream answer is stored meanwhile.
      return this.locks.withLock(narInfoLockKey(hash), ttl, 'narinfo', async () => {
        const existing = await this.narInfoRows.find(hash);
        if (existing) {
          if (sameNarInfo(existing, narInfo)) return 'exists';
          throw new ConflictError(
            `${what}: another narinfo for ${existing.storePath} is already here; delete it first`,
          );
        }
        await this.checkAgainstNar(what, narInfo, narKey);
        const origin = uploadOrigin(who);
        await this.narInfoRows.save({
          hash,
          narInfo,
          narKey,
          upstreamUrl: origin,
          narUpstreamUrl: origin,
        });
        this.narInfos.forgetMiss(hash);
        this.logger.log(`stored ${what} (${narInfo.storePath}) uploaded with token "${who}"`);
        return 'stored';
      });
    });
  }

  /** `PUT /<hash>.ls`: a NAR listing; a path already here keeps its own. */
  listing(hash: string, req: IncomingMessage, who: string): Promise<UploadOutcome> {
    return this.counted('listing', async () => {
      checkHash(hash);
      const what = `${hash}.ls`;
      const body = await readUpload(req, {
        what,
        maxBytes: MAX_LISTING_BYTES,
        idleMs: this.idleMs,
      });
      let listing: unknown;
      try {
        listing = JSON.parse(body.toString('utf8'));
      } catch {
        // not JSON: refused below
      }
      if (!isNarListing(listing)) throw new UploadRejectedError(`${what} is not a NAR listing`);
      const key = documentKeys.listing(hash);
      // Nix uploads the listing before the narinfo; once the narinfo is here, its listing stays.
      return this.locks.withLock(
        narInfoLockKey(hash),
        this.config.lock.downloadTtlMs,
        'narinfo',
        async () => {
          if (await this.narInfoRows.find(hash)) {
            const kept = await this.documents.get(key, MAX_LISTING_BYTES);
            if (kept?.equals(body)) return 'exists';
            throw new ConflictError(`${what}: the path is already here with its own listing`);
          }
          await this.documents.put(key, body);
          this.logger.log(`stored ${what} uploaded with token "${who}"`);
          return 'stored';
        },
      );
    });
  }

  /** `PUT /log/<drv>`: a build log, streamed into storage; a newer upload replaces it. */
  log(drv: string, req: IncomingMessage, who: string): Promise<UploadOutcome> {
    return this.counted('log', async () => {
      parseStorePathBaseName(drv); // 400 for anything else
      const what = `log/${drv}`;
      try {
        const bytes = await this.documents.put(
          documentKeys.log(drv),
          uploadBody(req, { what, maxBytes: MAX_LOG_BYTES, idleMs: this.idleMs }),
        );
        this.logger.log(`stored ${what} (${bytes} bytes) uploaded with token "${who}"`);
      } catch (e) {
        throw this.uploadError(what, req, e);
      }
      return 'stored';
    });
  }

  /** `PUT /realisations/<id>.doi` or `/build-trace-v2/<drv>/<output>.doi`. */
  realisation(path: string, req: IncomingMessage, who: string): Promise<UploadOutcome> {
    return this.counted('realisation', async () => {
      const parsed = parseRealisationPath(path); // 400 for anything else
      const body = await readUpload(req, {
        what: path,
        maxBytes: MAX_REALISATION_BYTES,
        idleMs: this.idleMs,
      });
      const { signatures, fingerprints } = parseRealisation(body.toString('utf8'), parsed);
      if (
        this.config.access.requireTrustedSignature &&
        !fingerprints.some((fp) =>
          signatures.some((s) => verifyFingerprint(s, fp, this.trustedKeys)),
        )
      ) {
        throw new UploadRejectedError(`${path} has no signature by a trusted key`);
      }
      const key = documentKeys.realisation(path);
      const ttl = this.config.lock.downloadTtlMs;
      return this.locks.withLock(documentLockKey(key), ttl, 'narinfo', async () => {
        const kept = await this.documents.get(key, MAX_REALISATION_BYTES);
        if (kept?.equals(body)) return 'exists';
        if (kept) throw new ConflictError(`${path}: another realisation is already here`);
        await this.documents.put(key, body);
        this.logger.log(`stored ${path} uploaded with token "${who}"`);
        return 'stored';
      });
    });
  }

  private get idleMs(): number {
    return this.config.clientStallTimeoutMs;
  }

  /** Counts the outcome of an upload (a refusal for what it carries as `rejected`). */
  private async counted(
    kind: UploadKind,
    upload: () => Promise<UploadOutcome>,
  ): Promise<UploadOutcome> {
    try {
      const outcome = await upload();
      this.metrics.upload(kind, outcome);
      return outcome;
    } catch (e) {
      if (isRejection(e)) this.metrics.upload(kind, 'rejected');
      throw e;
    }
  }

  /**
   * Checks that the NAR a narinfo names is here and is what the narinfo says: its size, and —
   * decompressed in a verifier thread, under the NAR's lock — its NarHash and NarSize, unless they
   * are known already (checked for an earlier narinfo, or signed by a trusted upstream for a NAR
   * narwhal fetches on its first request and verifies then: Nix skips uploading a NAR whose HEAD
   * says it is here). Records them; changes nothing when it does not match.
   */
  private async checkAgainstNar(what: string, narInfo: NarInfo, narKey: string): Promise<void> {
    const ttl = this.config.lock.downloadTtlMs;
    await this.locks.withLock(narLockKey(narKey), ttl, 'nar', async () => {
      const row = await this.files.find(narKey);
      const stored = row?.storedSize != null && (await this.store.stat(narKey)) !== null;
      if (!row || (!stored && row.narHash === null)) {
        throw new UploadRejectedError(
          `${what}: its NAR nar/${narKey} is not here; upload it first`,
        );
      }
      const size = stored ? row.storedSize : row.fileSize;
      if (narInfo.fileSize !== undefined && size !== null && narInfo.fileSize !== size) {
        throw new UploadRejectedError(
          `${what}: FileSize ${narInfo.fileSize}, but nar/${narKey} has ${size} bytes`,
        );
      }
      if (row.narHash !== null) {
        if (
          row.narHash !== narInfo.narHash ||
          row.narSize !== narInfo.narSize ||
          row.compression !== narInfo.compression
        ) {
          throw new UploadRejectedError(
            `${what} does not match nar/${narKey}: it is a ${row.compression} NAR of ${row.narSize} bytes with NarHash ${row.narHash}`,
          );
        }
        return;
      }
      try {
        await this.storedNars.check(
          { ...row, compression: narInfo.compression },
          narInfo.narHash,
          narInfo.narSize,
        );
      } catch (e) {
        if (e instanceof NarMismatchError) {
          throw new UploadRejectedError(`${what} does not match nar/${narKey}: ${e.message}`);
        }
        throw e;
      }
      await this.files.setNarHash(narKey, narInfo.narHash, narInfo.narSize, narInfo.compression);
    });
  }

  /**
   * What a failed upload of a body answers: a refusal stays one (a mismatch becomes one), a full
   * disk stays 507; a client that went away gets nothing (the reply cannot reach it anyway).
   */
  private uploadError(what: string, req: IncomingMessage, e: unknown): Error {
    if (e instanceof UploadRejectedError || e instanceof InsufficientStorageError) return e;
    if (e instanceof NarMismatchError) return new UploadRejectedError(`${what}: ${e.message}`);
    if (req.readableAborted || req.destroyed) {
      return new UploadRejectedError(`${what}: the client broke the upload off`);
    }
    return e instanceof Error ? e : new Error(String(e));
  }
}

function checkHash(hash: string): void {
  if (!isStorePathHash(hash)) {
    throw new InvalidHashError(`invalid store path hash ${quoteForError(hash)}`);
  }
}

/** A refusal for what an upload carries (4xx), as opposed to a failure here. */
function isRejection(e: unknown): boolean {
  return (
    e instanceof UploadRejectedError || e instanceof ConflictError || e instanceof NixFormatError
  );
}
