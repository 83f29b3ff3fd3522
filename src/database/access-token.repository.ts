import { Injectable } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { AccessTokenEntity } from './entities';

export type NewAccessToken = Omit<AccessTokenEntity, 'lastUsedAt'>;

/** Access tokens by name, and by the hash of the token a request carries. */
@Injectable()
export class AccessTokenRepository {
  constructor(private readonly ds: DataSource) {}

  private get repo() {
    return this.ds.getRepository(AccessTokenEntity);
  }

  findByHash(tokenHash: string): Promise<AccessTokenEntity | null> {
    return this.repo.findOneBy({ tokenHash });
  }

  findByName(name: string): Promise<AccessTokenEntity | null> {
    return this.repo.findOneBy({ name });
  }

  /** Every token, by name. */
  list(): Promise<AccessTokenEntity[]> {
    return this.repo.find({ order: { name: 'ASC' } });
  }

  /** Records a new token; false when the name is taken. */
  async create(token: NewAccessToken): Promise<boolean> {
    await this.ds
      .createQueryBuilder()
      .insert()
      .into(AccessTokenEntity)
      .values({ ...token, lastUsedAt: null })
      .orIgnore()
      .execute();
    // Ignored when the name exists: then the row holds another token's hash.
    return (await this.repo.countBy({ name: token.name, tokenHash: token.tokenHash })) > 0;
  }

  /** Deletes the token; false when there is none of that name. */
  async revoke(name: string): Promise<boolean> {
    const result = await this.repo.delete({ name });
    return (result.affected ?? 0) > 0;
  }

  async touch(name: string, now = Date.now()): Promise<void> {
    await this.repo.update({ name }, { lastUsedAt: now });
  }
}
