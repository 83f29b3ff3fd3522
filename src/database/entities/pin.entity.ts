import { Column, Entity, PrimaryColumn } from 'typeorm';
import { bigintNumber } from './columns';

/**
 * A pinned store path: the LRU job never evicts its closure (the path and everything its stored
 * narinfos reference, transitively).
 */
@Entity('pins')
export class PinEntity {
  /** The store path's hash part. */
  @PrimaryColumn({ type: 'varchar', length: 32 })
  hash!: string;

  @Column({ name: 'store_path', type: 'text' })
  storePath!: string;

  @Column({ name: 'created_at', type: 'bigint', transformer: bigintNumber })
  createdAt!: number;

  /** The token's name, or `cli` for `narwhal pin add`. */
  @Column({ name: 'created_by', type: 'varchar', length: 64 })
  createdBy!: string;
}
