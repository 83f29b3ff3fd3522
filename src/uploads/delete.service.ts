import { Inject, Injectable, Logger } from '@nestjs/common';
import { NotFoundError } from '../common/errors';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { DocumentStore, documentKeys } from '../documents/document-store';
import { NarFileRepository } from '../database/nar-file.repository';
import { NarInfoRepository } from '../database/narinfo.repository';
import { TakeoverLocks } from '../instances/takeover-locks';
import { narInfoLockKey, narLockKey } from '../locking/lock-keys';
import { RememberedNars } from '../nar/stored-nar-memory';
import { NarInfoService } from '../narinfo/narinfo.service';
import { parseNarFileName } from '../nix/compression';
import { InvalidHashError, quoteForError } from '../nix/errors';
import { isStorePathHash } from '../nix/store-path';
import { NAR_STORE, type NarStore } from '../storage/nar-store';

/**
 * `DELETE /<hash>.narinfo` and `DELETE /nar/<file>`, database and storage kept consistent: rows go
 * first, in one transaction (from then on nothing points at the object), then the object, under the
 * NAR's lock (no download or upload of it runs meanwhile). What narwhal remembers of a deleted
 * narinfo is forgotten on every instance. A pin does not stop a delete.
 */
@Injectable()
export class DeleteService {
  private readonly logger = new Logger('delete');

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    @Inject(NAR_STORE) private readonly store: NarStore,
    private readonly narInfoRows: NarInfoRepository,
    private readonly files: NarFileRepository,
    private readonly documents: DocumentStore,
    private readonly locks: TakeoverLocks,
    private readonly narInfos: NarInfoService,
    private readonly remembered: RememberedNars,
  ) {}

  /**
   * Deletes the narinfo of `hash`, its listing, and its NAR unless another narinfo points at it.
   * NotFoundError when there is no such narinfo.
   */
  async narInfo(hash: string, who: string): Promise<void> {
    if (!isStorePathHash(hash)) {
      throw new InvalidHashError(`invalid store path hash ${quoteForError(hash)}`);
    }
    const ttl = this.config.lock.downloadTtlMs;
    const narKey = await this.locks.withLock(narInfoLockKey(hash), ttl, 'narinfo', async () => {
      const row = await this.narInfoRows.find(hash);
      if (!row) throw new NotFoundError(`${hash}.narinfo not found`);
      const deleted = await this.locks.withLock(narLockKey(row.narKey), ttl, 'nar', async () => {
        const done = await this.narInfoRows.deleteWithUnsharedNar(hash);
        if (done?.narRowDeleted) await this.store.delete(done.narKey);
        return done;
      });
      await this.documents.delete(documentKeys.listing(hash));
      return deleted?.narRowDeleted ? deleted.narKey : null;
    });
    await this.narInfos.forgetEverywhere(hash);
    if (narKey) await this.remembered.forgetEverywhere(narKey);
    const nar = narKey ? ` and nar/${narKey}` : '';
    this.logger.log(`deleted ${hash}.narinfo${nar} with token "${who}"`);
  }

  /**
   * Deletes the NAR `name` and every narinfo that points at it (with their listings). NotFoundError
   * when neither a row nor an object of that name is here.
   */
  async nar(name: string, who: string): Promise<void> {
    parseNarFileName(name); // 400 for anything else
    const ttl = this.config.lock.downloadTtlMs;
    const hashes = await this.locks.withLock(narLockKey(name), ttl, 'nar', async () => {
      const row = await this.files.find(name);
      if (!row && !(await this.store.stat(name))) throw new NotFoundError(`nar/${name} not found`);
      const pointing = await this.narInfoRows.hashesOf(name);
      await this.files.deleteWithNarInfos(name);
      await this.store.delete(name);
      return pointing;
    });
    await this.remembered.forgetEverywhere(name);
    for (const hash of hashes) {
      await this.documents.delete(documentKeys.listing(hash));
      await this.narInfos.forgetEverywhere(hash);
    }
    const also = hashes.length ? ` and ${hashes.map((h) => `${h}.narinfo`).join(', ')}` : '';
    this.logger.log(`deleted nar/${name}${also} with token "${who}"`);
  }
}
