import type { Compression } from '../../nix/compression';
import type { NarExpectations } from '../nar-verifier';

/** Messages between VerifierPool (main thread) and a verifier worker. */

export type ToWorker =
  /** Check the file at `path` as it grows (a download's spool). */
  | { type: 'file'; id: number; path: string; expect: NarExpectations }
  /** Check chunks sent with `chunk` (a stored object read elsewhere). */
  | { type: 'stream'; id: number; expect: NarExpectations }
  /** List the NAR in chunks sent with `chunk` (a listing made from a stored NAR). */
  | { type: 'list'; id: number; compression: Compression }
  /** File mode: the file now holds `size` bytes. */
  | { type: 'grew'; id: number; size: number }
  /** Stream mode: the next bytes. */
  | { type: 'chunk'; id: number; bytes: Uint8Array }
  /** No more bytes: `size` in all. */
  | { type: 'end'; id: number; size: number }
  | { type: 'abort'; id: number };

export type FromWorker =
  /** Done: verified, or listed (`listing`, for a list job). */
  | { type: 'verified'; id: number; listing?: string }
  /** mismatch: the bytes are wrong; too-large: past NarSize (a bomb); io: the check itself broke. */
  | { type: 'failed'; id: number; message: string; kind: 'mismatch' | 'too-large' | 'io' }
  /** Stream mode: this many bytes of earlier chunks were taken in (flow control). */
  | { type: 'consumed'; id: number; bytes: number };
