import { describe, expect, it } from 'vitest';
import { makeKey } from '../../test/support/signing-keys';
import { makeStorePath, sign, STORE_DIR } from '../../test/support/store-paths';
import { UploadRejectedError } from '../common/errors';
import { NixFormatError } from '../nix/errors';
import { serializeNarInfo, type NarInfo } from '../nix/narinfo';
import { parsePublicKey } from '../signing/keys';
import { parseUploadedNarInfo } from './uploaded-narinfo';

const trusted = makeKey('uploader-1');
const stranger = makeKey('stranger-1');
const trustedKeys = [parsePublicKey(trusted.publicText)];

async function uploaded(changes: Partial<NarInfo> = {}, keys = [trusted]) {
  const f = await makeStorePath([]);
  const narInfo = sign({ ...f.narInfo, ...changes }, keys);
  return { f, text: serializeNarInfo(narInfo) };
}

describe('parseUploadedNarInfo', () => {
  it('accepts a signed narinfo for its own path, naming its NAR by FileHash', async () => {
    const { f, text } = await uploaded();
    const { narInfo, narKey } = parseUploadedNarInfo(f.hash, text, {
      storeDir: STORE_DIR,
      trustedKeys,
    });
    expect(narKey).toBe(f.narName);
    expect(narInfo.narHash).toBe(f.narInfo.narHash);
  });

  it('refuses, as a 4xx, what would store something wrong', async () => {
    const other = await makeStorePath([]);
    const cases: [string, Partial<NarInfo>, RegExp][] = [
      ['another path', { storePath: other.storePath }, /describes another path/],
      ['no FileHash', { fileHash: undefined }, /has no FileHash/],
      ['a URL not under FileHash', { url: `nar/${other.narName}` }, /is not nar\/<FileHash>/],
      ['a compression narwhal cannot check', { compression: 'lz4' }, /cannot decompress lz4/],
    ];
    for (const [label, changes, message] of cases) {
      const { f, text } = await uploaded(changes);
      const parse = () => parseUploadedNarInfo(f.hash, text, { storeDir: STORE_DIR, trustedKeys });
      expect(parse, label).toThrow(UploadRejectedError);
      expect(parse, label).toThrow(message);
    }
  });

  it('asks for a trusted signature only when given trusted keys', async () => {
    const { f, text } = await uploaded({}, [stranger]);
    expect(() => parseUploadedNarInfo(f.hash, text, { storeDir: STORE_DIR, trustedKeys })).toThrow(
      /no signature by a trusted key/,
    );
    expect(parseUploadedNarInfo(f.hash, text, { storeDir: STORE_DIR }).narKey).toBe(f.narName);
  });

  it('refuses a malformed narinfo with a Nix format error', async () => {
    const f = await makeStorePath([]);
    expect(() =>
      parseUploadedNarInfo(f.hash, 'StorePath: nonsense\n', { storeDir: STORE_DIR }),
    ).toThrow(NixFormatError);
  });
});
