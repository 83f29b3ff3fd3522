import { Column, Entity, JoinColumn, ManyToOne, PrimaryColumn } from 'typeorm';
import type { NarInfoEntity } from './narinfo.entity';

/** An upstream `Sig` line, kept verbatim. */
@Entity('narinfo_signatures')
export class NarInfoSignatureEntity {
  @PrimaryColumn({ name: 'narinfo_hash', type: 'varchar', length: 32 })
  narInfoHash!: string;

  @PrimaryColumn({ type: 'int' })
  position!: number;

  @Column({ type: 'text' })
  signature!: string;

  @ManyToOne('NarInfoEntity', 'signatures', { onDelete: 'CASCADE' })
  @JoinColumn({ name: 'narinfo_hash' })
  narInfo?: NarInfoEntity;
}
