import { randomBytes } from 'node:crypto';

/** This running narwhal process, as the other instances of a deployment know it. */
export interface Instance {
  /** Where the other instances reach it (config.selfUrl). */
  readonly url: string;
  /** Random per process: tells a restarted instance at the same URL from the one that ran before. */
  readonly boot: string;
  /** What this instance writes as the info of the locks it holds: `<url>#<boot>`. */
  readonly holderInfo: string;
}

export const INSTANCE = Symbol('INSTANCE');

/** Response header of /healthz that carries the instance's boot id. */
export const BOOT_HEADER = 'x-narwhal-instance';

export function makeInstance(url: string): Instance {
  const boot = randomBytes(8).toString('hex');
  return { url, boot, holderInfo: `${url}#${boot}` };
}

/** The URL and boot id in a lock's holder info; the boot id is absent in older or foreign info. */
export function parseHolderInfo(info: string): { url: string; boot?: string } | null {
  if (!/^https?:\/\//.test(info)) return null;
  const hash = info.lastIndexOf('#');
  return hash < 0 ? { url: info } : { url: info.slice(0, hash), boot: info.slice(hash + 1) };
}
