import type { UpstreamConfig } from './config-types';

/** Parsers for single setting values; they throw plain Errors that the caller wraps in ConfigError. */

export function parseIntStrict(s: string, min: number, max: number): number {
  if (!/^-?\d+$/.test(s)) throw new Error(`"${s}" is not a whole number`);
  const n = Number(s);
  if (n < min || n > max) throw new Error(`${n} is outside ${min}..${max}`);
  return n;
}

/** An http(s) URL, without trailing slashes. */
export function parseHttpUrl(v: string): string {
  const u = new URL(v);
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('must be an http(s) URL');
  return v.replace(/\/+$/, '');
}

export function parseBool(s: string): boolean {
  const v = s.trim().toLowerCase();
  if (['true', '1', 'yes', 'on'].includes(v)) return true;
  if (['false', '0', 'no', 'off'].includes(v)) return false;
  throw new Error(`"${s}" is not a boolean (true/false)`);
}

export function parseServerAddr(s: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]*)):(\d{1,5})$/.exec(s.trim());
  if (!m) throw new Error(`"${s}" is not an address of the form [host]:port`);
  const port = parseIntStrict(m[3], 0, 65535);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

/** `https://user:pass@host/path?priority=10` → base URL, priority, basic-auth header. */
export function parseUpstreamUrl(text: string, index: number): UpstreamConfig {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new Error(`upstream #${index + 1} is not a URL`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new Error(`upstream #${index + 1}: only http and https are supported`);
  }
  let priority = 40;
  const p = u.searchParams.get('priority');
  if (p !== null) priority = parseIntStrict(p, 0, 1_000_000);
  u.searchParams.delete('priority');
  let authorization: string | undefined;
  if (u.username || u.password) {
    const user = decodeURIComponent(u.username);
    const pass = decodeURIComponent(u.password);
    authorization = `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
    u.username = '';
    u.password = '';
  }
  const query = u.search;
  u.search = '';
  u.hash = '';
  const url = u.toString().replace(/\/+$/, '');
  return { url, priority, query, authorization };
}
