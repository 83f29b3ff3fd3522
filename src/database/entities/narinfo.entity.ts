import { Column, Entity, Index, OneToMany, PrimaryColumn } from 'typeorm';
import { bigintNumber } from './columns';
import { NarInfoReferenceEntity } from './narinfo-reference.entity';
import { NarInfoSignatureEntity } from './narinfo-signature.entity';

/** A narinfo as fetched and verified from upstream, keyed by the store path's hash part. */
@Entity('narinfos')
export class NarInfoEntity {
  @PrimaryColumn({ type: 'varchar', length: 32 })
  hash!: string;

  @Column({ name: 'store_path', type: 'text' })
  storePath!: string;

  @Index('idx_narinfos_nar_key')
  @Column({ name: 'nar_key', type: 'varchar', length: 128 })
  narKey!: string;

  @Column({ type: 'varchar', length: 16 })
  compression!: string;

  @Column({ name: 'file_hash', type: 'varchar', length: 100, nullable: true })
  fileHash!: string | null;

  @Column({ name: 'file_size', type: 'bigint', nullable: true, transformer: bigintNumber })
  fileSize!: number | null;

  @Column({ name: 'nar_hash', type: 'varchar', length: 100 })
  narHash!: string;

  @Column({ name: 'nar_size', type: 'bigint', transformer: bigintNumber })
  narSize!: number;

  @Column({ type: 'text', nullable: true })
  deriver!: string | null;

  @Column({ type: 'varchar', length: 64, nullable: true })
  system!: string | null;

  @Column({ type: 'text', nullable: true })
  ca!: string | null;

  /** Upstream base URL the narinfo came from. */
  @Column({ name: 'upstream_url', type: 'text' })
  upstreamUrl!: string;

  /** narwhal's own `Sig` line value, cached; re-made when the key changes. */
  @Column({ name: 'own_signature', type: 'text', nullable: true })
  ownSignature!: string | null;

  @Column({ name: 'created_at', type: 'bigint', transformer: bigintNumber })
  createdAt!: number;

  @Index('idx_narinfos_last_accessed_at')
  @Column({ name: 'last_accessed_at', type: 'bigint', transformer: bigintNumber })
  lastAccessedAt!: number;

  @OneToMany(() => NarInfoReferenceEntity, (r) => r.narInfo, { cascade: ['insert'] })
  references!: NarInfoReferenceEntity[];

  @OneToMany(() => NarInfoSignatureEntity, (s) => s.narInfo, { cascade: ['insert'] })
  signatures!: NarInfoSignatureEntity[];
}
