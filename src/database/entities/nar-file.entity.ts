import { Column, Entity, Index, PrimaryColumn } from 'typeorm';
import { bigintNumber } from './columns';

/**
 * A NAR file narwhal serves under `nar/<key>`: where its bytes come from upstream, what they must hash
 * to, and whether a verified copy is in storage.
 */
@Entity('nar_files')
export class NarFileEntity {
  @PrimaryColumn({ type: 'varchar', length: 128 })
  key!: string;

  /** Absolute upstream URL of the bytes (opaque; may carry a query). */
  @Column({ name: 'upstream_url', type: 'text' })
  upstreamUrl!: string;

  @Column({ type: 'varchar', length: 16 })
  compression!: string;

  @Column({ name: 'file_hash', type: 'varchar', length: 100, nullable: true })
  fileHash!: string | null;

  @Column({ name: 'file_size', type: 'bigint', nullable: true, transformer: bigintNumber })
  fileSize!: number | null;

  /** `sha256:<nix32>` of the uncompressed NAR; null for a NAR fetched by name before any narinfo. */
  @Column({ name: 'nar_hash', type: 'varchar', length: 100, nullable: true })
  narHash!: string | null;

  @Column({ name: 'nar_size', type: 'bigint', nullable: true, transformer: bigintNumber })
  narSize!: number | null;

  /** Bytes in storage; null while not stored. */
  @Index('idx_nar_files_stored_size')
  @Column({ name: 'stored_size', type: 'bigint', nullable: true, transformer: bigintNumber })
  storedSize!: number | null;

  @Column({ name: 'created_at', type: 'bigint', transformer: bigintNumber })
  createdAt!: number;

  @Index('idx_nar_files_last_accessed_at')
  @Column({ name: 'last_accessed_at', type: 'bigint', transformer: bigintNumber })
  lastAccessedAt!: number;
}
