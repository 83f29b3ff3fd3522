import { randomBytes } from 'node:crypto';
import { link, mkdir, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { formatSecretKey, generateSecretKey, parseSecretKey, type SecretKey } from './keys';

export interface LoadedKey {
  key: SecretKey;
  generated: boolean;
  /** Set when the file is readable by group or others. */
  looseMode?: number;
}

/**
 * Reads the secret key at `path`, or creates one named `name` (mode 0600) when the file does not
 * exist. Creation is atomic (write a private temp file, then hard-link it into place), so two
 * processes starting together end up with the same key.
 */
export async function loadOrCreateSecretKey(path: string, name: string): Promise<LoadedKey> {
  try {
    return await readKey(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  await writeFile(tmp, `${formatSecretKey(generateSecretKey(name))}\n`, {
    mode: 0o600,
    flag: 'wx',
  });
  try {
    await link(tmp, path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    // Another process won the race: use its key.
  } finally {
    await unlink(tmp);
  }
  const loaded = await readKey(path);
  return { ...loaded, generated: true };
}

async function readKey(path: string): Promise<LoadedKey> {
  const text = await readFile(path, 'utf8');
  let key: SecretKey;
  try {
    key = parseSecretKey(text);
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  }
  const mode = (await stat(path)).mode & 0o777;
  return { key, generated: false, looseMode: mode & 0o077 ? mode : undefined };
}
