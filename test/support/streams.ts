import type { Readable } from 'node:stream';

/** Reads a whole stream into one Buffer (for small bodies only). */
export async function readAll(stream: Readable | AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}
