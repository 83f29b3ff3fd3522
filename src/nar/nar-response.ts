import type { Readable } from 'node:stream';
import type { ByteRange } from './byte-range';
import type { StoredFile } from './stored-file';

/** What the controller streams to one client. */
export interface NarResponse {
  /**
   * A stream; the whole answer at once (a small NAR remembered in memory); or a stored file to send
   * without a stream (see StoredFile).
   */
  body: Readable | Buffer | StoredFile;
  /** Length of the whole NAR file, when known. */
  length?: number;
  /** Set when `body` is only this part of the file (a 206 answer). */
  range?: ByteRange;
  /** storage: a stored copy; download: this instance's download; peer: another instance's download. */
  source: 'storage' | 'download' | 'peer';
}
