import type { Readable } from 'node:stream';

/** Reads a whole stream into one Buffer (for small bodies only); a Buffer is already whole. */
export async function readAll(stream: Readable | AsyncIterable<Buffer> | Buffer): Promise<Buffer> {
  if (Buffer.isBuffer(stream)) return stream;
  const chunks: Buffer[] = [];
  for await (const chunk of stream as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}
