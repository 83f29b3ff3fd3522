import { createServer, type AddressInfo } from 'node:net';

/** Asks the OS for a free port on 127.0.0.1, then releases it (for a child process to bind). */
export function freePort(): Promise<number> {
  return new Promise((done, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => done(port));
    });
  });
}

/** A URL on 127.0.0.1 where nothing listens (a port taken from listen(0), then released). */
export async function closedPortUrl(): Promise<string> {
  return `http://127.0.0.1:${await freePort()}`;
}
