/** What writeSettled needs of a stream: a socket and an HTTP response both have it. */
export interface SettledWritable {
  readonly destroyed: boolean;
  write(chunk: Buffer, callback: (error?: Error | null) => void): boolean;
  once(event: 'close', listener: () => void): unknown;
  removeListener(event: 'close', listener: () => void): unknown;
}

/**
 * Writes `chunk` to `stream`; true once the stream has handed it on (the write's callback: for a
 * socket, the kernel took it), false if the write failed or the stream closed first (a write still
 * pending when a connection closes may never call back).
 */
export function writeSettled(stream: SettledWritable, chunk: Buffer): Promise<boolean> {
  if (stream.destroyed) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onClose = () => resolve(false);
    stream.once('close', onClose);
    stream.write(chunk, (e) => {
      stream.removeListener('close', onClose);
      resolve(!e);
    });
  });
}
