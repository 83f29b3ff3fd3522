import { Inject, Injectable, Logger } from '@nestjs/common';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import type { NarFileEntity } from '../database/entities';
import { NarFileRepository } from '../database/nar-file.repository';
import { narLockKey } from '../locking/lock-keys';
import { TakeoverLocks } from '../instances/takeover-locks';
import { NAR_STORE, type NarStore } from '../storage/nar-store';
import { NarMismatchError } from '../common/errors';
import { expectationsOf } from './nar-verifier';
import { RememberedNars } from './stored-nar-memory';
import { VerifierPool } from './verification/verifier-pool';

/** What became of a stored NAR checked against a narinfo that arrived after it. */
export type AdoptResult = 'verified' | 'discarded' | 'unchanged';

/**
 * A NAR can be stored before any narinfo names it (fetched by name, trusted because it hashes to the
 * FileHash in its name). When a narinfo for it arrives, its signed NarHash/NarSize are checked
 * against the stored object — decompressed in a verifier thread — before anyone is served from it
 * as that narinfo's NAR; an object that does not match is deleted, to be fetched again.
 */
@Injectable()
export class StoredNarCheck {
  private readonly logger = new Logger('nar');

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    @Inject(NAR_STORE) private readonly store: NarStore,
    private readonly files: NarFileRepository,
    private readonly verifiers: VerifierPool,
    private readonly locks: TakeoverLocks,
    private readonly remembered: RememberedNars,
  ) {}

  /**
   * If `key` is stored without a NarHash, checks it against `narHash`/`narSize` (under the NAR's
   * lock, so no download of it runs meanwhile) and records them, or deletes the object.
   */
  async adopt(key: string, narHash: string, narSize: number): Promise<AdoptResult> {
    const first = await this.files.find(key);
    if (first?.storedSize == null || first.narHash !== null) return 'unchanged';
    const ttl = this.config.lock.downloadTtlMs;
    return this.locks.withLock(narLockKey(key), ttl, 'nar', async () => {
      const row = await this.files.find(key);
      if (row?.storedSize == null || row.narHash !== null) return 'unchanged';
      try {
        await this.check(row, narHash, narSize);
      } catch (e) {
        // Unproven bytes are not served as this narinfo's NAR: the next request fetches it again.
        await this.files.markMissing(key);
        await this.remembered.forgetEverywhere(key);
        await this.files.setNarHash(key, narHash, narSize);
        if (e instanceof NarMismatchError) {
          await this.store.delete(key);
          this.logger.warn(`discarded stored ${key}: its narinfo says otherwise (${e.message})`);
        } else {
          this.logger.warn(`${key} could not be checked against its narinfo (${String(e)})`);
        }
        return 'discarded';
      }
      await this.files.setNarHash(key, narHash, narSize);
      return 'verified';
    });
  }

  /**
   * Checks the stored object of `row` against its FileHash/FileSize and `narHash`/`narSize`, by
   * reading and decompressing it in a verifier thread; changes nothing. Rejects with
   * NarMismatchError when it does not match, with another error when it cannot be read. The caller
   * holds the NAR's lock.
   */
  async check(row: NarFileEntity, narHash: string, narSize: number): Promise<void> {
    const check = this.verifiers.checkStream(expectationsOf({ ...row, narHash, narSize }));
    try {
      const body = await this.store.read(row.key);
      let size = 0;
      for await (const chunk of body as AsyncIterable<Buffer>) {
        size += chunk.length;
        await Promise.race([check.write(chunk), check.failed]);
      }
      await check.finish(size);
    } catch (e) {
      check.abandon();
      throw e;
    }
  }
}
