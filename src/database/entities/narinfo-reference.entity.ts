import { Column, Entity, JoinColumn, ManyToOne, PrimaryColumn } from 'typeorm';
import type { NarInfoEntity } from './narinfo.entity';

@Entity('narinfo_references')
export class NarInfoReferenceEntity {
  @PrimaryColumn({ name: 'narinfo_hash', type: 'varchar', length: 32 })
  narInfoHash!: string;

  @PrimaryColumn({ type: 'int' })
  position!: number;

  /** Store path base name, `<hash>-<name>`. */
  @Column({ type: 'text' })
  reference!: string;

  @ManyToOne('NarInfoEntity', 'references', { onDelete: 'CASCADE' })
  @JoinColumn({ name: 'narinfo_hash' })
  narInfo?: NarInfoEntity;
}
