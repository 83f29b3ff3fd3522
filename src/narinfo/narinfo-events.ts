import { Injectable, Logger } from '@nestjs/common';

/** A narinfo this instance has just fetched from an upstream, verified and stored. */
export interface FetchedNarInfo {
  hash: string;
  /** Its References, as base names (`<hash>-<name>`). */
  references: readonly string[];
  /** Base URL of the upstream it came from. */
  upstreamUrl: string;
}

/** A narinfo a client asked for and was served (from the database or fetched for it). */
export interface AskedNarInfo {
  hash: string;
  /** narwhal's name of its NAR (`nar/<narKey>`). */
  narKey: string;
  /** Base URL of the upstream the narinfo came from (or the upload marker). */
  upstreamUrl: string;
}

type Listener<T> = (event: T) => void;

/**
 * What the narinfo flow tells whoever listens (the prefetcher), without depending on it: listeners
 * run synchronously on the request path, so they only queue work, and a listener that throws is
 * logged and ignored.
 */
@Injectable()
export class NarInfoEvents {
  private readonly logger = new Logger('narinfo');
  private readonly fetchedListeners: Listener<FetchedNarInfo>[] = [];
  private readonly askedListeners: Listener<AskedNarInfo>[] = [];

  onFetched(listener: Listener<FetchedNarInfo>): void {
    this.fetchedListeners.push(listener);
  }

  onAsked(listener: Listener<AskedNarInfo>): void {
    this.askedListeners.push(listener);
  }

  fetched(event: FetchedNarInfo): void {
    for (const l of this.fetchedListeners) this.call(l, event);
  }

  asked(event: AskedNarInfo): void {
    for (const l of this.askedListeners) this.call(l, event);
  }

  private call<T>(listener: Listener<T>, event: T): void {
    try {
      listener(event);
    } catch (e) {
      this.logger.warn(`narinfo listener failed: ${(e as Error).message}`);
    }
  }
}
