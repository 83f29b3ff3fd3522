/** `scheme://user:password@` in any text: the credentials part is replaced before a line is written. */
const URL_CREDENTIALS = /\b([a-z][a-z0-9+.-]*:\/\/)[^\s/?#@]+@/gi;

/** Replaces credentials in every URL found in `text` (`https://u:p@host` → `https://[redacted]@host`). */
export function redactCredentials(text: string): string {
  return text.includes('@') ? text.replace(URL_CREDENTIALS, '$1[redacted]@') : text;
}

/** Header paths pino censors wherever a request, a reply or a headers object is logged. */
export const REDACTED_PATHS = [
  'req.headers.authorization',
  'req.headers["proxy-authorization"]',
  'req.headers.cookie',
  'res.headers["set-cookie"]',
  'headers.authorization',
  'headers["proxy-authorization"]',
  'headers.cookie',
  'headers["set-cookie"]',
];
