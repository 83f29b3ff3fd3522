import { Column, Entity, Index, PrimaryColumn } from 'typeorm';
import { bigintNumber } from './columns';

/**
 * An access token: its name, what it allows, and the sha256 of the token — never the token itself,
 * which is shown once when it is made. Kept in the database so that every instance accepts it.
 */
@Entity('access_tokens')
export class AccessTokenEntity {
  @PrimaryColumn({ type: 'varchar', length: 64 })
  name!: string;

  /** sha256 of the token, hex. */
  @Index('idx_access_tokens_token_hash', { unique: true })
  @Column({ name: 'token_hash', type: 'varchar', length: 64 })
  tokenHash!: string;

  /** Comma-separated permissions (`read,write`). */
  @Column({ type: 'varchar', length: 64 })
  permissions!: string;

  @Column({ name: 'created_at', type: 'bigint', transformer: bigintNumber })
  createdAt!: number;

  /** When it stops working (epoch ms), or null for never. */
  @Column({ name: 'expires_at', type: 'bigint', nullable: true, transformer: bigintNumber })
  expiresAt!: number | null;

  /** Last accepted (updated at most once a minute per instance), or null. */
  @Column({ name: 'last_used_at', type: 'bigint', nullable: true, transformer: bigintNumber })
  lastUsedAt!: number | null;
}
