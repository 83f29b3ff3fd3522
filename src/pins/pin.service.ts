import { Injectable } from '@nestjs/common';
import { NotFoundError } from '../common/errors';
import { NarFileRepository } from '../database/nar-file.repository';
import { NarInfoRepository } from '../database/narinfo.repository';
import { PinRepository } from '../database/pin.repository';
import { InvalidStorePathError, quoteForError } from '../nix/errors';
import { isStorePathHash } from '../nix/store-path';

/** A pin as the endpoint and the command show it. */
export interface PinView {
  hash: string;
  storePath: string;
  createdAt: string;
  /** The token's name, or `cli`. */
  createdBy: string;
  /** What the pin keeps from the LRU job now: store paths with a narinfo here, stored NAR bytes. */
  closure: { paths: number; storedBytes: number };
}

/**
 * Pins: a pinned store path's closure (the path and every path its stored narinfos reference,
 * transitively, as far as narwhal has them) is never evicted by the LRU job. Only paths narwhal has
 * can be pinned; a delete still removes a pinned path. Used by the HTTP endpoint and by
 * `narwhal pin` alike (they say what happened: the log, or the terminal).
 */
@Injectable()
export class PinService {
  constructor(
    private readonly pins: PinRepository,
    private readonly narInfos: NarInfoRepository,
    private readonly files: NarFileRepository,
  ) {}

  /** Pins `path` (a store path, its base name or its hash); NotFoundError when it is not here. */
  async pin(path: string, by: string): Promise<PinView> {
    const hash = hashOfPath(path);
    const row = await this.narInfos.find(hash);
    if (!row) throw new NotFoundError(`${hash} is not in this cache`);
    await this.pins.add({ hash, storePath: row.storePath, createdAt: Date.now(), createdBy: by });
    return this.view(hash);
  }

  /** Unpins `path`; NotFoundError when it was not pinned. */
  async unpin(path: string): Promise<void> {
    const hash = hashOfPath(path);
    if (!(await this.pins.remove(hash))) throw new NotFoundError(`${hash} is not pinned`);
  }

  async list(): Promise<PinView[]> {
    const out: PinView[] = [];
    for (const pin of await this.pins.list()) out.push(await this.view(pin.hash));
    return out;
  }

  private async view(hash: string): Promise<PinView> {
    const pin = await this.pins.find(hash);
    if (!pin) throw new NotFoundError(`${hash} is not pinned`);
    const closure = await this.pins.closureOf([hash]);
    return {
      hash,
      storePath: pin.storePath,
      createdAt: new Date(pin.createdAt).toISOString(),
      createdBy: pin.createdBy,
      closure: {
        paths: closure.hashes.size,
        storedBytes: await this.files.storedBytesOf(closure.narKeys),
      },
    };
  }
}

/** The hash part of `/nix/store/<hash>-<name>`, `<hash>-<name>` or `<hash>`. */
export function hashOfPath(path: string): string {
  const base = path.slice(path.lastIndexOf('/') + 1);
  const hash = base.slice(0, 32);
  if (!isStorePathHash(hash) || (base.length > 32 && base[32] !== '-')) {
    throw new InvalidStorePathError(`not a store path or hash: ${quoteForError(path)}`);
  }
  return hash;
}
