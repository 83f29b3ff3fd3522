import { RangeNotSatisfiableError } from '../common/errors';

/** An inclusive byte range of a NAR file, as in `Range: bytes=start-end`. */
export interface ByteRange {
  start: number;
  end: number;
}

const SINGLE_RANGE = /^bytes[ \t]*=[ \t]*(\d*)[ \t]*-[ \t]*(\d*)[ \t]*$/i;

/**
 * The part of a file of `length` bytes that a `Range` header asks for (RFC 9110 §14), or undefined
 * to answer with the whole file: no header, an unknown length, syntax narwhal does not serve (several
 * ranges, other units) or a malformed header, which the RFC says to ignore. A range starting past the
 * end throws RangeNotSatisfiableError. Nix sends `bytes=<offset>-` to resume an interrupted download.
 */
export function resolveRange(
  header: string | undefined,
  length: number | undefined,
): ByteRange | undefined {
  if (header === undefined || length === undefined) return undefined;
  const m = SINGLE_RANGE.exec(header);
  if (!m) return undefined;
  const [, first, last] = m;
  if (first === '' && last === '') return undefined;
  if (first === '') {
    // Suffix range: the last N bytes.
    const n = Number(last);
    if (!Number.isSafeInteger(n)) return undefined;
    if (n === 0 || length === 0) throw new RangeNotSatisfiableError(length);
    return { start: Math.max(0, length - n), end: length - 1 };
  }
  const start = Number(first);
  const end = last === '' ? Infinity : Number(last);
  if (!Number.isSafeInteger(start) || (last !== '' && !Number.isSafeInteger(end)) || end < start) {
    return undefined;
  }
  if (start >= length) throw new RangeNotSatisfiableError(length);
  return { start, end: Math.min(end, length - 1) };
}

/** `Content-Range` of a 206 answer. */
export function contentRange(range: ByteRange, length: number): string {
  return `bytes ${range.start}-${range.end}/${length}`;
}
