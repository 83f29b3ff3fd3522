/**
 * `.narinfo` parsing and serialization.
 *
 * Format: one `Key: value` per line. Parsing is strict about what narwhal relies on (store paths,
 * hashes, sizes) and lenient where Nix is (unknown keys, empty `References:`, CRLF line ends).
 */
import { type Compression, parseCompression } from './compression';
import { NarInfoParseError, NixFormatError, quoteForError } from './errors';
import { normalizeSha256 } from './hash';
import { parseStorePath, parseStorePathBaseName } from './store-path';

export interface NarInfo {
  /** Full store path, e.g. `/nix/store/<hash>-<name>`. */
  storePath: string;
  /** Where the (compressed) NAR is; opaque, possibly absolute or with a query string. */
  url: string;
  compression: Compression;
  /** sha256 of the file as served, `sha256:<nix32>`. */
  fileHash?: string;
  fileSize?: number;
  /** sha256 of the uncompressed NAR, `sha256:<nix32>`. */
  narHash: string;
  narSize: number;
  /** Base names (`<hash>-<name>`), not full paths. */
  references: string[];
  /** Base name of the deriver; absent for `unknown-deriver` or no Deriver line. */
  deriver?: string;
  system?: string;
  /** `<key name>:<base64 signature>`, in file order, without duplicates. */
  sigs: string[];
  ca?: string;
}

const SINGLE_VALUED = new Set([
  'StorePath',
  'URL',
  'Compression',
  'FileHash',
  'FileSize',
  'NarHash',
  'NarSize',
  'References',
  'Deriver',
  'System',
  'CA',
]);

function fail(field: string, message: string): never {
  throw new NarInfoParseError(message, field);
}

/** Runs a validator and re-throws its format error as a NarInfoParseError naming the field. */
function inField<T>(field: string, parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof NixFormatError && !(err instanceof NarInfoParseError)) {
      throw new NarInfoParseError(err.message, field, { cause: err });
    }
    throw err;
  }
}

function parseSize(field: string, value: string): number {
  const n = /^[0-9]+$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n)) {
    fail(field, `${quoteForError(value)} is not a non-negative integer`);
  }
  return n;
}

function parseSha256(field: string, value: string): string {
  return inField(field, () => normalizeSha256(value));
}

/** Splits text into `[key, value]` pairs; blank lines are skipped, CRLF is accepted. */
function* fields(text: string): Generator<[string, string]> {
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].endsWith('\r') ? lines[i].slice(0, -1) : lines[i];
    if (line.trim() === '') continue;
    const colon = line.indexOf(':');
    if (colon <= 0) {
      throw new NarInfoParseError(`line ${i + 1} is not "Key: value": ${quoteForError(line)}`);
    }
    yield [line.slice(0, colon), line.slice(colon + 1).trim()];
  }
}

export function parseNarInfo(text: string, opts: { storeDir: string }): NarInfo {
  const seen = new Set<string>();
  const sigs: string[] = [];
  const out: Partial<NarInfo> = {};
  let compression: string | undefined;

  for (const [key, value] of fields(text)) {
    if (SINGLE_VALUED.has(key)) {
      if (seen.has(key)) fail(key, 'appears more than once');
      seen.add(key);
    }
    switch (key) {
      case 'StorePath':
        inField(key, () => parseStorePath(value, opts.storeDir));
        out.storePath = value;
        break;
      case 'URL':
        if (value === '') fail(key, 'is empty');
        out.url = value;
        break;
      case 'Compression':
        compression = value;
        break;
      case 'FileHash':
        out.fileHash = parseSha256(key, value);
        break;
      case 'FileSize':
        out.fileSize = parseSize(key, value);
        break;
      case 'NarHash':
        out.narHash = parseSha256(key, value);
        break;
      case 'NarSize':
        out.narSize = parseSize(key, value);
        if (out.narSize === 0) fail(key, 'must not be zero');
        break;
      case 'References':
        out.references = value.split(/\s+/).filter((ref) => ref !== '');
        for (const ref of out.references) inField(key, () => parseStorePathBaseName(ref));
        break;
      case 'Deriver':
        if (value !== 'unknown-deriver') {
          inField(key, () => parseStorePathBaseName(value));
          out.deriver = value;
        }
        break;
      case 'System':
        if (value !== '') out.system = value;
        break;
      case 'Sig':
        if (value === '') fail(key, 'is empty');
        if (!sigs.includes(value)) sigs.push(value);
        break;
      case 'CA':
        if (value === '') fail(key, 'is empty');
        out.ca = value;
        break;
      default:
        // Unknown keys are ignored: newer Nix writes more (e.g. Provenance).
        break;
    }
  }

  const { storePath, url, narHash, narSize } = out;
  if (storePath === undefined) fail('StorePath', 'is missing');
  if (url === undefined) fail('URL', 'is missing');
  if (narHash === undefined) fail('NarHash', 'is missing');
  if (narSize === undefined) fail('NarSize', 'is missing');

  const info: NarInfo = {
    storePath,
    url,
    compression: inField('Compression', () => parseCompression(compression)),
    narHash,
    narSize,
    references: out.references ?? [],
    sigs,
  };
  if (out.fileHash !== undefined) info.fileHash = out.fileHash;
  if (out.fileSize !== undefined) info.fileSize = out.fileSize;
  if (out.deriver !== undefined) info.deriver = out.deriver;
  if (out.system !== undefined) info.system = out.system;
  if (out.ca !== undefined) info.ca = out.ca;
  return info;
}

/** Refuses values that would break the line format (a newline would inject a key). */
function line(key: string, value: string | number): string {
  const text = String(value);
  if (/[\r\n]/.test(text)) {
    throw new NixFormatError(`narinfo ${key} must not contain a line break`);
  }
  return `${key}: ${text}\n`;
}

/**
 * Writes a narinfo in Nix's order. Compression is always written (a missing one means bzip2 to
 * clients); `References:` is written even when empty, as Nix does (`References: `).
 */
export function serializeNarInfo(n: NarInfo): string {
  let text =
    line('StorePath', n.storePath) + line('URL', n.url) + line('Compression', n.compression);
  if (n.fileHash !== undefined) text += line('FileHash', n.fileHash);
  if (n.fileSize !== undefined) text += line('FileSize', n.fileSize);
  text += line('NarHash', n.narHash) + line('NarSize', n.narSize);
  text += line('References', n.references.join(' '));
  if (n.deriver !== undefined) text += line('Deriver', n.deriver);
  if (n.system !== undefined) text += line('System', n.system);
  for (const sig of n.sigs) text += line('Sig', sig);
  if (n.ca !== undefined) text += line('CA', n.ca);
  return text;
}
