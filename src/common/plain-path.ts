/**
 * Fastify's limit on a route parameter's length (its `maxParamLength` default): a longer one matches
 * no route, and the request gets 404.
 */
const MAX_PARAM_LENGTH = 100;

/**
 * Whether `url` from `from` on is one route parameter as Fastify would see it, unchanged: at most
 * MAX_PARAM_LENGTH characters, none of them a `/` (a deeper path), a `?` (a query Fastify strips),
 * a `%` (an escape Fastify decodes) or a `;` or `#`. The front door takes such URLs only, so that
 * what it answers is what Fastify's route would have been given.
 */
export function isPlainPath(url: string, from: number): boolean {
  const length = url.length - from;
  if (length <= 0 || length > MAX_PARAM_LENGTH) return false;
  for (let i = from; i < url.length; i++) {
    const c = url.charCodeAt(i);
    // '#' 0x23, '%' 0x25, '/' 0x2f, ';' 0x3b, '?' 0x3f; and anything outside visible ASCII.
    if (
      c <= 0x20 ||
      c >= 0x7f ||
      c === 0x23 ||
      c === 0x25 ||
      c === 0x2f ||
      c === 0x3b ||
      c === 0x3f
    )
      return false;
  }
  return true;
}
