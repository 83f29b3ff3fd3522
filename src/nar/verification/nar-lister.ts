import { once } from 'node:events';
import type { Transform } from 'node:stream';
import type { Compression } from '../../nix/compression';
import { createNarDecompressor } from '../../nix/decompress';
import { listNar, serializeNarListing } from '../../nix/nar-listing';

/**
 * Makes the listing (`.ls`) of a compressed NAR fed in chunks: decompresses and parses it as a
 * stream, never holding it whole. Runs in a verifier thread, like the checks.
 */
export class NarLister {
  private readonly decompressor: Transform;
  private readonly listing: Promise<string>;

  constructor(compression: Compression) {
    const d = createNarDecompressor(compression, { onThisThread: true });
    if (!d) throw new Error(`cannot list a ${compression} NAR`);
    this.decompressor = d;
    this.listing = listNar(d).then(serializeNarListing);
    this.listing.catch(() => undefined); // surfaces through finish and failure
  }

  /** Rejects as soon as the NAR turns out not to be one. */
  get failure(): Promise<void> {
    return this.listing.then(() => new Promise<void>(() => undefined));
  }

  async update(chunk: Buffer): Promise<void> {
    const d = this.decompressor;
    if (!d.destroyed && !d.write(chunk)) await Promise.race([once(d, 'drain'), this.listing]);
  }

  /** The listing as Nix writes it (compact JSON). */
  async finish(): Promise<string> {
    this.decompressor.end();
    return this.listing;
  }

  destroy(): void {
    this.decompressor.destroy();
  }
}
