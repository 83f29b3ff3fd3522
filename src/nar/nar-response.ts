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

export const NAR_CONTENT_TYPE = 'application/x-nix-nar';

/**
 * The status and headers of a NAR answer (flat: `[name, value, …]`), the controller's and the front
 * door's alike: the content type; where the bytes come from, when `source` is given; and the length.
 * A whole file of known length advertises byte ranges (Nix then resumes an interrupted download
 * instead of failing it); a part of one is a 206 with Content-Range; a length not known yet gets
 * neither (a chunked body).
 */
export function narHead(nar: Partial<Pick<NarResponse, 'length' | 'range' | 'source'>>): {
  status: number;
  headers: string[];
} {
  const headers = ['content-type', NAR_CONTENT_TYPE];
  if (nar.source !== undefined) headers.push('x-narwhal-source', nar.source);
  if (nar.length === undefined) return { status: 200, headers };
  headers.push('accept-ranges', 'bytes');
  if (!nar.range) {
    headers.push('content-length', String(nar.length));
    return { status: 200, headers };
  }
  const { start, end } = nar.range;
  headers.push(
    'content-range',
    contentRange(nar.range, nar.length),
    'content-length',
    String(end - start + 1),
  );
  return { status: 206, headers };
}
