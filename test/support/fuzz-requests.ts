import type { Prng } from './prng';

/**
 * Hostile and malformed HTTP requests for fuzzing narwhal over raw sockets: fuzzed paths (hashes
 * and NAR names valid and not, traversal, odd encodings, huge ones), methods, headers (ranges,
 * huge and many headers, bad framing) and raw bytes (garbage, other protocols, broken request
 * lines). Every request is drawn from a seeded Prng, so a run can be repeated.
 */

/** Names that exist on the fuzzing upstream: narwhal has them (or can fetch them). */
export interface FuzzTargets {
  /** Store path hash parts whose narinfo narwhal serves. */
  hashes: string[];
  /** NAR file names (`<filehash>.nar.xz`) narwhal has stored or can fetch. */
  narNames: string[];
}

export interface FuzzRequest {
  /** What kind of request this is, for the figures (e.g. `path`, `header`, `raw`). */
  kind: 'path' | 'method' | 'header' | 'framing' | 'raw';
  bytes: Buffer;
}

const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz';
const NOT_NIX32 = 'eotuEOTU!$&()*+,;=:@_~-.';
const EXTENSIONS = ['.nar', '.nar.xz', '.nar.zst', '.nar.bz2', '.nar.br', '.nar.lz4', '.nar.lzip'];
const BAD_EXTENSIONS = ['.nar.gz', '.xz', '.nar.xz.xz', '.NAR', '.nar.', '', '.nar%00.xz'];
const METHODS = ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'POST', 'PATCH', 'TRACE'];
const ODD_METHODS = ['PROPFIND', 'MKCOL', 'get', 'G\u00c9T', 'GET\tX', 'X'.repeat(300), ''];
const TRAVERSALS = [
  '/../../../../etc/passwd',
  '/%2e%2e/%2e%2e/%2e%2e/etc/passwd',
  '/..%2f..%2f..%2fetc%2fpasswd',
  '/nar/..%2F..%2Fsecret-key',
  '/nar/../secret-key',
  '/nar/%2e%2e/narwhal.sqlite',
  '//etc/passwd',
  '/secret-key',
  '/narwhal.sqlite',
  '/store/tmp/',
  '/store/nar/',
  '/nar/',
  '/nar//',
  '/./nix-cache-info',
  '/nix-cache-info/..',
  '/%252e%252e/%252e%252e/etc/passwd',
  '/..\\..\\..\\windows\\win.ini',
  '/nar/%c0%ae%c0%ae/%c0%af',
  '/log/..%2f..%2fsecret-key',
  '/realisations/..%2fsecret-key',
  '/build-trace-v2/../../secret-key',
];
const ENDPOINTS = [
  '/',
  '/nix-cache-info',
  '/pubkey',
  '/healthz',
  '/readyz',
  '/metrics',
  '/favicon.ico',
  '/_narwhal/downloads/',
  '/log/',
  '/realisations/',
  '/build-trace-v2/',
];
const ODD_PIECES = [
  '%00',
  '%',
  '%zz',
  '%ff%fe',
  '%c0%af',
  '%e2%80%ae',
  '%0d%0aSet-Cookie:%20x=1',
  '\u00ff\u00fe',
  '\u00e9',
  ';',
  '?',
  '#frag',
  '*',
  '%2F',
  '+',
  ' ',
  '\t',
];
const RANGES = [
  'bytes=0-',
  'bytes=0-0',
  'bytes=-1',
  'bytes=-0',
  'bytes=5-3',
  'bytes=0-1,4-5',
  'bytes=99999999999999999999-',
  'bytes=-99999999999999999999',
  'bytes=18446744073709551616-',
  'bytes=1-2-3',
  'bytes=',
  'bytes',
  'items=0-10',
  'bytes=abc-def',
  'bytes= 0 - 10',
  'bytes=0-10, ',
  `bytes=${'0-1,'.repeat(500)}0-1`,
  'bytes=-',
  'bytes=1e3-',
  'bytes=0x10-',
];

/** A random nix32 hash part (32 chars) or file hash (52 chars), or a broken variant of one. */
function hashLike(rng: Prng, len: number): string {
  switch (rng.int(8)) {
    case 0:
      return rng.string(rng.between(0, len * 2), NIX32); // wrong length
    case 1: {
      const h = rng.string(len, NIX32).split('');
      h[rng.int(len)] = rng.pick([...NOT_NIX32]);
      return h.join('');
    }
    case 2:
      return rng.string(len, NIX32).toUpperCase();
    case 3:
      return rng.string(len, '0123456789abcdef'); // hex
    default:
      return rng.string(len, NIX32); // valid, unknown
  }
}

function narName(rng: Prng, targets: FuzzTargets): string {
  switch (rng.int(6)) {
    case 0:
      return rng.pick(targets.narNames);
    case 1:
      return `${rng.pick(targets.narNames)}${rng.pick(['x', '.xz', '%00', '/', '/..', '?x=1'])}`;
    case 2:
      return `${hashLike(rng, 52)}${rng.pick(BAD_EXTENSIONS)}`;
    default:
      return `${hashLike(rng, 52)}${rng.pick(EXTENSIONS)}`;
  }
}

/** A request target: mostly paths narwhal routes, broken in one way or another. */
export function fuzzPath(rng: Prng, targets: FuzzTargets): string {
  switch (rng.int(12)) {
    case 0:
      return `/${rng.pick(targets.hashes)}.narinfo`;
    case 1:
      return `/${hashLike(rng, 32)}.narinfo`;
    case 2:
      return `/${hashLike(rng, 32)}${rng.pick(['.ls', '.NARINFO', '.narinfo.', '', '.narinfo/x'])}`;
    case 3:
    case 4:
      return `/nar/${narName(rng, targets)}`;
    case 5:
      return rng.pick(TRAVERSALS);
    case 6: {
      // A valid-looking path with odd pieces spliced in.
      const base = rng.chance(0.5)
        ? `/${rng.pick(targets.hashes)}.narinfo`
        : `/nar/${rng.pick(targets.narNames)}`;
      const at = rng.int(base.length + 1);
      return base.slice(0, at) + rng.pick(ODD_PIECES) + base.slice(at);
    }
    case 7:
      return `${rng.pick(ENDPOINTS)}${rng.chance(0.5) ? rng.string(rng.int(40), NIX32 + '.-_/') : ''}`;
    case 8:
      // Long paths: past Fastify's parameter limit, and past Node's 16 KiB header limit.
      return `/${rng.pick(['nar/', '', 'log/'])}${'a'.repeat(rng.pick([101, 1000, 8000, 17_000, 70_000]))}`;
    case 9:
      return rng.pick([
        '*',
        'http://evil.example/nix-cache-info',
        `http://127.0.0.1/${rng.pick(targets.hashes)}.narinfo`,
        'evil.example:443',
        'nix-cache-info',
        '',
      ]);
    case 10:
      // Random printable and high bytes.
      return `/${Buffer.from(rng.bytes(rng.between(1, 60)).map((b) => (b < 0x21 ? b + 0x21 : b))).toString('latin1')}`;
    default:
      return `/_narwhal/downloads/${narName(rng, targets)}`;
  }
}

/** Extra header lines (without the final CRLF). */
function fuzzHeaders(rng: Prng): string[] {
  const lines: string[] = [];
  for (let i = rng.int(4); i > 0; i--) {
    switch (rng.int(14)) {
      case 0:
      case 1:
      case 2:
        lines.push(`Range: ${rng.pick(RANGES)}`);
        break;
      case 3:
        lines.push(`X-Big: ${'x'.repeat(rng.pick([1000, 8000, 15_000, 20_000, 70_000]))}`);
        break;
      case 4:
        for (let j = rng.pick([50, 100, 200, 2000]); j > 0; j--) lines.push(`X-H${j}: ${j}`);
        break;
      case 5:
        lines.push(
          `Accept-Encoding: ${rng.pick(['zstd, br, gzip, deflate', '*;q=0', 'identity;q=0', 'x'.repeat(500), ';;;,,,'])}`,
        );
        break;
      case 6:
        lines.push(
          `Authorization: ${rng.pick(['Basic', 'Basic !!!', 'Bearer ' + 'A'.repeat(5000), 'Basic Og=='])}`,
        );
        break;
      case 7:
        lines.push(rng.pick(['Host: a', 'Host: b', 'Host:', `Host: ${'h'.repeat(3000)}`]));
        break;
      case 8:
        lines.push(rng.pick(['Expect: 100-continue', 'Expect: 999-nonsense']));
        break;
      case 9:
        lines.push(
          rng.pick([
            'Connection: Upgrade\r\nUpgrade: websocket',
            'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__',
          ]),
        );
        break;
      case 10:
        lines.push(
          rng.pick([
            'If-None-Match: *',
            'If-Modified-Since: yesterday',
            'If-Range: "x"',
            'X-Forwarded-For: ::1, 10.0.0.1, <script>',
            'X-Request-Id: ' + 'r'.repeat(4000),
            'Cookie: ' + 'c=1; '.repeat(1000),
          ]),
        );
        break;
      case 11:
        // Header lines that break the grammar.
        lines.push(
          rng.pick([
            'No-Colon-Here',
            ' folded: continuation',
            'Bad Name: x',
            'X-Nul: a\u0000b',
            'X-Bell: \u0007',
            ': empty-name',
            'X-Utf8: \u00e9\u00ff',
            'X-CR: a\rb',
          ]),
        );
        break;
      default:
        lines.push(`X-Random-${rng.int(1000)}: ${rng.string(rng.int(100), NIX32 + ' ;=,')}`);
    }
  }
  return lines;
}

/** Bodies and framing a GET should not have, or that contradict each other. */
function fuzzFraming(rng: Prng): string {
  return rng.pick([
    'Content-Length: 5\r\n\r\nhello',
    'Content-Length: 10\r\n\r\nhi',
    'Content-Length: -1\r\n\r\n',
    'Content-Length: 99999999999999999999\r\n\r\n',
    'Content-Length: 1\r\nContent-Length: 2\r\n\r\nab',
    'Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
    'Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n',
    'Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n',
    'Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n',
    'Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n',
    'Transfer-Encoding: identity\r\n\r\n',
    'Content-Length: 0\r\n\r\nGET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n',
    'Content-Length: 4\r\n\r\nGET / HTTP/1.1\r\n\r\n',
  ]);
}

/** Bytes that are not a well-formed HTTP/1.1 request at all. */
function fuzzRaw(rng: Prng, targets: FuzzTargets): Buffer {
  const path = fuzzPath(rng, targets);
  const choices: (() => string | Buffer)[] = [
    () => rng.bytes(rng.between(1, 4096)),
    () => 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
    // Node closes a CONNECT at once when nobody listens for tunnels.
    () => `CONNECT ${rng.pick(['evil.example:443', path])} HTTP/1.1\r\nHost: x\r\n\r\n`,
    // The start of a TLS ClientHello.
    () => Buffer.from('160301020001000200303', 'hex'),
    () => `GET ${path}\r\n\r\n`,
    () => `GET ${path} HTTP/1.0\r\n\r\n`,
    () => `GET ${path} HTTP/9.9\r\nHost: x\r\n\r\n`,
    () => `GET ${path} HTTP/1.1\n\n`,
    () => `GET  ${path}  HTTP/1.1\r\nHost: x\r\n\r\n`,
    () => `GET ${path} HTTP/1.1\r\nHost: x\r\n`, // never finished
    () => `GET ${path} HTTP/1.1`,
    () => `${path} GET HTTP/1.1\r\n\r\n`,
    () => '\r\n\r\n\r\n',
    () => 'GET',
    () => '',
    () => `GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n`.repeat(rng.between(2, 20)),
    () =>
      `GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n${rng.bytes(rng.between(1, 200)).toString('latin1')}`,
    () =>
      Buffer.concat([
        Buffer.from('GET /'),
        rng.bytes(rng.between(1, 100)),
        Buffer.from(' HTTP/1.1\r\n\r\n'),
      ]),
  ];
  const out = rng.pick(choices)();
  return typeof out === 'string' ? Buffer.from(out, 'latin1') : out;
}

/** One fuzzed request. */
export function fuzzRequest(rng: Prng, targets: FuzzTargets): FuzzRequest {
  const kind = rng.pick(['path', 'path', 'method', 'header', 'header', 'framing', 'raw'] as const);
  if (kind === 'raw') return { kind, bytes: fuzzRaw(rng, targets) };
  const method =
    kind === 'method'
      ? rng.pick([...METHODS, ...ODD_METHODS])
      : rng.pick(['GET', 'GET', 'GET', 'HEAD']);
  const path = fuzzPath(rng, targets);
  const head = [`${method} ${path} HTTP/1.1`, 'Host: 127.0.0.1', 'Connection: close'];
  if (kind === 'header') head.push(...fuzzHeaders(rng));
  const text =
    kind === 'framing'
      ? `${head.join('\r\n')}\r\n${fuzzFraming(rng)}`
      : `${head.join('\r\n')}\r\n\r\n`;
  return { kind, bytes: Buffer.from(text, 'latin1') };
}
