import { createHash, type Hash } from 'node:crypto';
import { encodeNix32 } from '../../src/nix/base32';

/** sha256 of a streamed body as `sha256:<nix32>` (narinfo's FileHash form), plus its length. */
export class StreamingSha256 {
  private readonly hash: Hash = createHash('sha256');
  private bytes = 0;

  update(chunk: Uint8Array): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
  }

  /** Finishes the hash; call once. */
  digest(): { hash: string; size: number } {
    return { hash: `sha256:${encodeNix32(this.hash.digest())}`, size: this.bytes };
  }
}
