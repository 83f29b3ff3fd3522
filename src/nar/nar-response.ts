import type { Readable } from 'node:stream';
import { contentRange, type ByteRange } from './byte-range';
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

/**
 * The status and length headers of a NAR answer (flat: `[name, value, …]`): a whole file of known
 * length advertises byte ranges (Nix then resumes an interrupted download instead of failing it); a
 * part of one is a 206 with Content-Range; a length not known yet gets neither (a chunked body).
 */
export function narLengthHead(nar: Pick<NarResponse, 'length' | 'range'>): {
  status: number;
  headers: string[];
} {
  if (nar.length === undefined) return { status: 200, headers: [] };
  if (!nar.range) {
    return {
      status: 200,
      headers: ['accept-ranges', 'bytes', 'content-length', String(nar.length)],
    };
  }
  const { start, end } = nar.range;
  return {
    status: 206,
    headers: [
      'accept-ranges',
      'bytes',
      'content-range',
      contentRange(nar.range, nar.length),
      'content-length',
      String(end - start + 1),
    ],
  };
}
