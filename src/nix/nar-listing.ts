/**
 * NAR listings (`<hash>.ls`): the JSON Nix writes with `write-nar-listing` —
 * `{"version":1,"root":<node>}` where a node is
 *   `{"type":"regular","size":N[,"executable":true],"narOffset":N}` (narOffset: where the file's
 *   bytes start in the uncompressed NAR),
 *   `{"type":"symlink","target":"…"}` or
 *   `{"type":"directory","entries":{"<name>":<node>,…}}`.
 *
 * `listNar` reads a NAR as a stream (file contents are skipped, never buffered) and builds it.
 * The NAR format: every token is a string — a little-endian u64 length, the bytes, zero padding to
 * a multiple of 8 — in the grammar
 *   nar = "nix-archive-1" node;  node = "(" "type" (regular | symlink | directory) ")"
 *   regular = ["executable" ""] "contents" <bytes>;  symlink = "target" <string>
 *   directory = { "entry" "(" "name" <name> "node" node ")" }   (names strictly ascending)
 */
import { NarFormatError } from './errors';

export type NarListingNode =
  | { type: 'regular'; size: number; executable?: true; narOffset: number }
  | { type: 'symlink'; target: string }
  | { type: 'directory'; entries: Record<string, NarListingNode> };

export interface NarListing {
  version: 1;
  root: NarListingNode;
}

/** Longest token other than file contents (names, symlink targets). */
const MAX_STRING = 64 * 1024;
/** Deepest directory nesting accepted. */
const MAX_DEPTH = 256;

/** Reads exact byte counts from a stream of chunks, keeping its position. */
class ByteReader {
  position = 0;
  private chunk: Buffer = Buffer.alloc(0);
  private offset = 0;

  constructor(private readonly source: AsyncIterator<Buffer>) {}

  /** Makes at least one unread byte available; false at the end of the stream. */
  private async fill(): Promise<boolean> {
    while (this.offset >= this.chunk.length) {
      const next = await this.source.next();
      if (next.done) return false;
      this.chunk = next.value;
      this.offset = 0;
    }
    return true;
  }

  async read(n: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let need = n;
    while (need > 0) {
      if (!(await this.fill())) throw new NarFormatError('NAR ends in the middle of a token');
      const take = Math.min(need, this.chunk.length - this.offset);
      parts.push(this.chunk.subarray(this.offset, this.offset + take));
      this.offset += take;
      need -= take;
    }
    this.position += n;
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }

  async skip(n: number): Promise<void> {
    let left = n;
    while (left > 0) {
      if (!(await this.fill())) throw new NarFormatError('NAR ends in the middle of a file');
      const take = Math.min(left, this.chunk.length - this.offset);
      this.offset += take;
      left -= take;
    }
    this.position += n;
  }

  async atEnd(): Promise<boolean> {
    return !(await this.fill());
  }
}

class NarParser {
  constructor(private readonly r: ByteReader) {}

  private async u64(): Promise<number> {
    const n = (await this.r.read(8)).readBigUInt64LE(0);
    if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new NarFormatError('NAR length out of range');
    return Number(n);
  }

  private async padding(length: number): Promise<void> {
    const pad = (8 - (length % 8)) % 8;
    if (pad > 0 && !(await this.r.read(pad)).every((b) => b === 0)) {
      throw new NarFormatError('NAR padding is not zero');
    }
  }

  private async string(): Promise<string> {
    const length = await this.u64();
    if (length > MAX_STRING) throw new NarFormatError(`NAR string of ${length} bytes is too long`);
    const bytes = await this.r.read(length);
    await this.padding(length);
    return bytes.toString('utf8');
  }

  private async expect(token: string): Promise<void> {
    const got = await this.string();
    if (got !== token) {
      throw new NarFormatError(`expected "${token}" in the NAR, got "${got.slice(0, 40)}"`);
    }
  }

  async archive(): Promise<NarListing> {
    await this.expect('nix-archive-1');
    const root = await this.node(0);
    if (!(await this.r.atEnd())) throw new NarFormatError('bytes after the end of the NAR');
    return { version: 1, root };
  }

  private async node(depth: number): Promise<NarListingNode> {
    if (depth > MAX_DEPTH) throw new NarFormatError('NAR directories are nested too deeply');
    await this.expect('(');
    await this.expect('type');
    const type = await this.string();
    let node: NarListingNode;
    if (type === 'regular') node = await this.regular();
    else if (type === 'symlink') {
      await this.expect('target');
      node = { type: 'symlink', target: await this.string() };
      await this.expect(')');
    } else if (type === 'directory') node = await this.directory(depth);
    else throw new NarFormatError(`unknown NAR node type "${type.slice(0, 40)}"`);
    return node;
  }

  private async regular(): Promise<NarListingNode> {
    let tag = await this.string();
    let executable = false;
    if (tag === 'executable') {
      await this.expect('');
      executable = true;
      tag = await this.string();
    }
    if (tag !== 'contents') throw new NarFormatError(`expected "contents", got "${tag}"`);
    const size = await this.u64();
    const narOffset = this.r.position;
    await this.r.skip(size);
    await this.padding(size);
    await this.expect(')');
    return executable
      ? { type: 'regular', size, executable: true, narOffset }
      : { type: 'regular', size, narOffset };
  }

  private async directory(depth: number): Promise<NarListingNode> {
    const entries: Record<string, NarListingNode> = {};
    let previous: string | undefined;
    for (;;) {
      const tag = await this.string();
      if (tag === ')') return { type: 'directory', entries };
      if (tag !== 'entry') throw new NarFormatError(`expected "entry", got "${tag.slice(0, 40)}"`);
      await this.expect('(');
      await this.expect('name');
      const name = await this.string();
      if (name === '' || name === '.' || name === '..' || /[/\0]/.test(name)) {
        throw new NarFormatError(`invalid NAR entry name "${name.slice(0, 40)}"`);
      }
      if (previous !== undefined && !(Buffer.compare(Buffer.from(previous), Buffer.from(name)) < 0))
        throw new NarFormatError('NAR directory entries are not in ascending order');
      previous = name;
      await this.expect('node');
      entries[name] = await this.node(depth + 1);
      await this.expect(')');
    }
  }
}

/** The listing of the (uncompressed) NAR read from `nar`; throws NarFormatError if it is not one. */
export async function listNar(nar: AsyncIterable<Buffer>): Promise<NarListing> {
  return new NarParser(new ByteReader(nar[Symbol.asyncIterator]())).archive();
}

/** A listing as Nix writes it (compact JSON, keys in Nix's order). */
export function serializeNarListing(listing: NarListing): string {
  return JSON.stringify(listing);
}

/** True if `value` looks like a NAR listing (`{"version":1,"root":{"type":…}}`). */
export function isNarListing(value: unknown): value is NarListing {
  const v = value as { version?: unknown; root?: { type?: unknown } } | null;
  return (
    typeof v === 'object' &&
    v !== null &&
    v.version === 1 &&
    typeof v.root === 'object' &&
    v.root !== null &&
    ['regular', 'symlink', 'directory'].includes(v.root.type as string)
  );
}
