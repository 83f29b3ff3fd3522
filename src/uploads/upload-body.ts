import type { IncomingMessage } from 'node:http';
import { pipeline, Transform, type Readable, type TransformCallback } from 'node:stream';
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';
import {
  UnsupportedEncodingError,
  UploadRejectedError,
  UploadTooLargeError,
} from '../common/errors';
import { createNarDecompressor } from '../nix/decompress';

export interface UploadBodyOptions {
  /** What is uploaded, for messages (`nar/…`, `<hash>.narinfo`). */
  what: string;
  /** Most bytes accepted after decoding. */
  maxBytes: number;
  /** A body that sends nothing for this long is abandoned (0: never). */
  idleMs: number;
}

/** Decoders of the Content-Encodings an upload may carry (Nix's `*-compression` settings). */
const DECODERS: Record<string, (() => Transform) | null> = {
  '': null,
  identity: null,
  none: null,
  gzip: createGunzip,
  'x-gzip': createGunzip,
  deflate: createInflate,
  br: createBrotliDecompress,
  xz: () => createNarDecompressor('xz')!,
  zstd: () => createNarDecompressor('zstd')!,
};

/** The request's Content-Encoding, checked: the decoder it needs, or null for none. */
function decoderOf(req: IncomingMessage, what: string): (() => Transform) | null {
  const encoding = String(req.headers['content-encoding'] ?? '')
    .trim()
    .toLowerCase();
  const decoder = DECODERS[encoding];
  if (decoder === undefined) {
    throw new UnsupportedEncodingError(`${what}: unsupported Content-Encoding "${encoding}"`);
  }
  return decoder;
}

/**
 * The length of the body as it will be read (after decoding), when the request says it: its
 * Content-Length without a Content-Encoding.
 */
export function declaredLength(req: IncomingMessage): number | undefined {
  if (decoderOf(req, 'upload') !== null) return undefined;
  const n = Number(req.headers['content-length']);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/**
 * The body of an upload as a stream: its Content-Encoding removed, failing with UploadTooLargeError
 * past `maxBytes` (at once when Content-Length announces more) and with UploadRejectedError when
 * the client sends nothing for `idleMs`. Never buffered whole.
 */
export function uploadBody(req: IncomingMessage, options: UploadBodyOptions): Readable {
  const { what, maxBytes, idleMs } = options;
  const decoder = decoderOf(req, what);
  const announced = declaredLength(req);
  if (announced !== undefined && announced > maxBytes) {
    throw new UploadTooLargeError(`${what} is larger than ${maxBytes} bytes`);
  }
  let size = 0;
  const limited = new Transform({
    transform(chunk: Buffer, _encoding, done: TransformCallback) {
      size += chunk.length;
      if (size > maxBytes)
        done(new UploadTooLargeError(`${what} is larger than ${maxBytes} bytes`));
      else done(null, chunk);
    },
  });
  let timer: NodeJS.Timeout | undefined;
  const idle = () => {
    clearTimeout(timer);
    if (idleMs <= 0) return;
    timer = setTimeout(() => {
      const why = `${what}: the client sent nothing for ${Math.round(idleMs / 1000)} s`;
      limited.destroy(new UploadRejectedError(why));
    }, idleMs);
    timer.unref();
  };
  idle();
  req.on('data', idle);
  const stages: [Readable, ...Transform[]] = [req, limited];
  if (decoder) {
    const d = decoder();
    // Before pipeline's own listener: the upload is refused as bad input, not as a failure here.
    d.once('error', (e) =>
      limited.destroy(new UploadRejectedError(`${what}: the body does not decode: ${e.message}`)),
    );
    stages.splice(1, 0, d);
  }
  pipeline(stages, () => {
    clearTimeout(timer);
    req.off('data', idle);
  });
  return limited;
}

/** The whole (small) body of an upload, decoded; see uploadBody. */
export async function readUpload(
  req: IncomingMessage,
  options: UploadBodyOptions,
): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of uploadBody(req, options) as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}
