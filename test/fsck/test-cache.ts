import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { compress } from 'lzma-native';
import type { DataSource } from 'typeorm';
import {
  NarFileEntity,
  NarInfoEntity,
  NarInfoReferenceEntity,
  NarInfoSignatureEntity,
} from '../../src/database/entities';
import { NarFileRepository } from '../../src/database/nar-file.repository';
import { NarInfoRepository } from '../../src/database/narinfo.repository';
import type { NarInfo } from '../../src/nix/narinfo';
import type { NarStore } from '../../src/storage/nar-store';
import { sha256Nix32 } from '../support/hash';
import { narOfFile, randomHashPart } from '../support/store-paths';
import { readAll } from '../support/streams';

/**
 * A small cache made the way narwhal makes one: narinfo rows saved by NarInfoRepository, NAR objects
 * put into a real NarStore and marked stored — with real xz data whose FileHash/FileSize and
 * NarHash/NarSize are right, so that only the damage a test does on purpose is wrong.
 */

const UPSTREAM = 'https://upstream.example';

export interface TestNar {
  /** Storage key, `<nix32 FileHash>.nar[.xz]`. */
  key: string;
  /** The bytes as stored. */
  file: Buffer;
  narInfo: NarInfo;
  /** Hash part of the narinfo, when one was saved. */
  hash?: string;
}

/** A NAR of `size` random bytes (xz: compressed with real xz) and the narinfo describing it. */
export async function makeNar(
  opts: { compression?: 'xz' | 'none'; size?: number } = {},
): Promise<TestNar> {
  const compression = opts.compression ?? 'xz';
  // Half random, half zeros: xz really compresses it, and the NAR is still unique.
  const size = opts.size ?? 8192;
  const nar = narOfFile(Buffer.concat([randomBytes(size / 2), Buffer.alloc(size / 2)]));
  const file = compression === 'xz' ? await compress(nar, { preset: 1 }) : nar;
  const fileHash = sha256Nix32(file);
  const key = `${fileHash}.nar${compression === 'xz' ? '.xz' : ''}`;
  const hash = randomHashPart();
  return {
    key,
    file,
    narInfo: {
      storePath: `/nix/store/${hash}-fsck-test`,
      url: `nar/${key}`,
      compression,
      fileHash: `sha256:${fileHash}`,
      fileSize: file.length,
      narHash: `sha256:${sha256Nix32(nar)}`,
      narSize: nar.length,
      references: [`${randomHashPart()}-dep`, `${hash}-fsck-test`],
      sigs: [`upstream.example-1:${randomBytes(64).toString('base64')}`],
    },
    hash,
  };
}

export class TestCache {
  readonly files: NarFileRepository;
  readonly narInfos: NarInfoRepository;

  constructor(
    readonly ds: DataSource,
    readonly store: NarStore,
  ) {
    this.files = new NarFileRepository(ds);
    this.narInfos = new NarInfoRepository(ds);
  }

  /** Saves the narinfo of `n` (and its nar_files row) without storing the NAR. */
  async saveNarInfo(n: TestNar): Promise<void> {
    await this.narInfos.save({
      hash: n.hash!,
      narInfo: n.narInfo,
      narKey: n.key,
      upstreamUrl: UPSTREAM,
      narUpstreamUrl: `${UPSTREAM}/${n.narInfo.url}`,
    });
  }

  /** A NAR fetched through its narinfo: narinfo saved, object put, row marked stored. */
  async addStored(opts: { compression?: 'xz' | 'none'; size?: number } = {}): Promise<TestNar> {
    const n = await makeNar(opts);
    await this.saveNarInfo(n);
    await this.putObject(n.key, n.file);
    await this.files.markStored(n.key, n.file.length);
    return n;
  }

  /** A NAR fetched without a narinfo (row from its name: FileHash only, no NarHash). */
  async addStoredWithoutNarInfo(): Promise<TestNar> {
    const n = await makeNar();
    await this.putObject(n.key, n.file);
    await this.files.recordStored(
      n.key,
      `${UPSTREAM}/${n.narInfo.url}`,
      { compression: 'xz', fileHash: n.narInfo.fileHash },
      n.file.length,
    );
    return { ...n, hash: undefined };
  }

  async putObject(key: string, bytes: Buffer): Promise<void> {
    await this.store.put(key, Readable.from([bytes]), bytes.length);
  }

  async readObject(key: string): Promise<Buffer | null> {
    if ((await this.store.stat(key)) === null) return null;
    return readAll(await this.store.read(key));
  }

  storedSize(key: string): Promise<number | null | undefined> {
    return this.files.find(key).then((r) => (r ? r.storedSize : undefined));
  }

  /** Everything fsck could change, in a comparable form. */
  async snapshot(): Promise<unknown> {
    const rows = await this.ds.getRepository(NarFileEntity).find({ order: { key: 'ASC' } });
    const narInfos = await this.ds.getRepository(NarInfoEntity).find({ order: { hash: 'ASC' } });
    const objects: Array<{ key: string; size: number; sha256: string }> = [];
    for await (const o of this.store.list()) {
      const bytes = await this.readObject(o.key);
      objects.push({ key: o.key, size: o.size, sha256: bytes ? sha256Nix32(bytes) : 'gone' });
    }
    objects.sort((a, b) => a.key.localeCompare(b.key));
    return {
      rows,
      narInfos,
      references: await this.ds.getRepository(NarInfoReferenceEntity).count(),
      signatures: await this.ds.getRepository(NarInfoSignatureEntity).count(),
      objects,
    };
  }
}
