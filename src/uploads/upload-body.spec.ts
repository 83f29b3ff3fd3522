import type { IncomingMessage } from 'node:http';
import { PassThrough, Readable } from 'node:stream';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import {
  UnsupportedEncodingError,
  UploadRejectedError,
  UploadTooLargeError,
} from '../common/errors';
import { fixtureBytes, seqText } from '../nix/__fixtures__/vectors';
import { declaredLength, readUpload, uploadBody } from './upload-body';

/** A request body as the server sees it: a stream with headers. */
function request(body: Buffer | Readable, headers: Record<string, string> = {}): IncomingMessage {
  const stream = Buffer.isBuffer(body) ? Readable.from([body]) : body;
  return Object.assign(stream, { headers }) as unknown as IncomingMessage;
}

const options = { what: 'test', maxBytes: 1024 * 1024, idleMs: 0 };

describe('upload bodies', () => {
  it('are decoded from every Content-Encoding Nix may send', async () => {
    const text = Buffer.from(seqText());
    for (const [encoding, body] of [
      ['', text],
      ['identity', text],
      ['gzip', gzipSync(text)],
      ['x-gzip', gzipSync(text)],
      ['deflate', deflateSync(text)],
      ['br', brotliCompressSync(text)],
      ['xz', fixtureBytes('cli/seq.txt.xz')],
      ['zstd', fixtureBytes('cli/seq.txt.zst')],
      ['ZSTD ', fixtureBytes('cli/seq.txt.zst')],
    ] as const) {
      const got = await readUpload(request(body, { 'content-encoding': encoding }), options);
      expect({ encoding, equal: got.equals(text) }).toEqual({ encoding, equal: true });
    }
  });

  it('refuse an unknown encoding and a body that does not decode', async () => {
    const req = request(Buffer.from('x'), { 'content-encoding': 'compress' });
    expect(() => uploadBody(req, options)).toThrow(UnsupportedEncodingError);
    const broken = request(Buffer.from('not gzip at all'), { 'content-encoding': 'gzip' });
    await expect(readUpload(broken, options)).rejects.toThrow(UploadRejectedError);
  });

  it('are cut at their limit: at once when Content-Length says more, else when it is passed', async () => {
    const big = Buffer.alloc(2000, 1);
    const small = { ...options, maxBytes: 1000 };
    const announced = request(big, { 'content-length': '2000' });
    expect(() => uploadBody(announced, small)).toThrow(UploadTooLargeError);
    await expect(readUpload(request(big), small)).rejects.toThrow(UploadTooLargeError);
    // A small compressed body that decodes past the limit (a bomb) is cut too.
    const bomb = request(gzipSync(Buffer.alloc(10_000_000)), { 'content-encoding': 'gzip' });
    await expect(readUpload(bomb, small)).rejects.toThrow(UploadTooLargeError);
  });

  it('are abandoned when the client sends nothing for the idle time', async () => {
    const stalled = new PassThrough();
    stalled.write('a little');
    const body = readUpload(request(stalled), { ...options, idleMs: 100 });
    await expect(body).rejects.toThrow('sent nothing for');
  });

  it('have a declared length only without an encoding', () => {
    expect(declaredLength(request(Buffer.alloc(0), { 'content-length': '42' }))).toBe(42);
    const gz = request(Buffer.alloc(0), { 'content-length': '42', 'content-encoding': 'gzip' });
    expect(declaredLength(gz)).toBeUndefined();
    expect(declaredLength(request(Buffer.alloc(0), { 'content-length': 'x' }))).toBeUndefined();
  });
});
