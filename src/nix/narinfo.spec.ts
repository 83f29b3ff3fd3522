import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { STORE_DIR, fixtureText } from './__fixtures__/vectors';
import { NarInfoParseError, NixFormatError } from './errors';
import { type NarInfo, parseNarInfo, serializeNarInfo } from './narinfo';

const opts = { storeDir: STORE_DIR };
const narinfoFixtures = readdirSync(join(__dirname, '__fixtures__', 'narinfo')).sort();

const MID = fixtureText('narinfo/mid.xz.narinfo');

/** MID with one line replaced (or removed when `value` is undefined). */
function withLine(key: string, value: string | undefined): string {
  const lines = MID.split('\n').filter((l) => !l.startsWith(`${key}:`));
  if (value !== undefined) lines.splice(1, 0, `${key}: ${value}`);
  return lines.join('\n');
}

describe('parseNarInfo on narinfo files written by Nix 2.8', () => {
  it('reads every field of a path with a reference', () => {
    expect(parseNarInfo(MID, opts)).toEqual<NarInfo>({
      storePath: '/nix/store/fybihwaqfjjwcgys0kw2qxll86cn93xn-mid',
      url: 'nar/0j4mhm2081lfnw9zgf6c1rsafb6c801qgh2hhvbryxg0a5wr12rk.nar.xz',
      compression: 'xz',
      fileHash: 'sha256:0j4mhm2081lfnw9zgf6c1rsafb6c801qgh2hhvbryxg0a5wr12rk',
      fileSize: 236,
      narHash: 'sha256:1j5gcjwkb88ph829gnppixgd37kqr1lqab3gfz6afcmkpxhykq5g',
      narSize: 536,
      references: ['yn39z09qmap99ya52fnkas1amd832dbm-leaf'],
      deriver: '04clvbkm0gq9yvqhdkw3j71lczf08mcj-mid.drv',
      sigs: [
        'test-1:z7otiq5c0CJMkc7erzJkq1yf8oAfMDXFLkk1l9jKz1vc+PEynA8jHGJDGsMtGz3O1zqNz3M0DeXuGkgplx0+AA==',
      ],
    });
  });

  it('reads "References: " (Nix writes a trailing space) as no references', () => {
    const text = fixtureText('narinfo/leaf.xz.narinfo');
    expect(text).toContain('\nReferences: \n');
    expect(parseNarInfo(text, opts).references).toEqual([]);
  });

  it('reads three references, one of them the path itself', () => {
    expect(parseNarInfo(fixtureText('narinfo/top.xz.narinfo'), opts).references).toEqual([
      'fybihwaqfjjwcgys0kw2qxll86cn93xn-mid',
      'r8pw0ryn1hkp3ip4wmr13ggk165f3235-top',
      'yn39z09qmap99ya52fnkas1amd832dbm-leaf',
    ]);
  });

  it('reads CA and the absence of Deriver and Sig (nix store make-content-addressed)', () => {
    const info = parseNarInfo(fixtureText('narinfo/mid-ca.narinfo'), opts);
    expect(info.ca).toBe('fixed:r:sha256:02v5j9sp7jwqhwfihl45zbkranvz0a92p36b1fny19ihv5fi7akf');
    expect(info.deriver).toBeUndefined();
    expect(info.sigs).toEqual([]);
  });

  it('takes Compression from the field, not from the URL (Nix 2.8 names gzip NARs .nar)', () => {
    const info = parseNarInfo(fixtureText('narinfo/leaf.gzip.narinfo'), opts);
    expect(info.url).toMatch(/\.nar$/);
    expect(info.compression).toBe('gzip');
  });

  it.each(narinfoFixtures)('serializes %s back to the exact bytes Nix wrote', (file) => {
    const text = fixtureText(`narinfo/${file}`);
    expect(serializeNarInfo(parseNarInfo(text, opts))).toBe(
      text.endsWith('\n') ? text : `${text}\n`,
    );
  });
});

describe('parseNarInfo leniency', () => {
  it('ignores unknown keys and round-trips without them', () => {
    const text = `${MID}Provenance: {"type":"build"}\nX-Future: 1\n`;
    const info = parseNarInfo(text, opts);
    expect(info).toEqual(parseNarInfo(MID, opts));
    expect(serializeNarInfo(info)).toBe(MID);
  });

  it('accepts CRLF line ends and blank lines', () => {
    const info = parseNarInfo(`${MID.replace(/\n/g, '\r\n')}\r\n\r\n`, opts);
    expect(serializeNarInfo(info)).toBe(MID);
  });

  it('accepts "References:" without the trailing space', () => {
    expect(
      parseNarInfo(withLine('References', undefined) + 'References:\n', opts).references,
    ).toEqual([]);
  });

  it('accepts a missing References line as none', () => {
    expect(parseNarInfo(withLine('References', undefined), opts).references).toEqual([]);
  });

  it('accepts a narinfo without FileHash and FileSize, and writes none back', () => {
    const text = withLine('FileSize', undefined).replace(/^FileHash: .*\n/m, '');
    const info = parseNarInfo(text, opts);
    expect(info.fileHash).toBeUndefined();
    expect(info.fileSize).toBeUndefined();
    const again = serializeNarInfo(info);
    expect(again).not.toMatch(/^File/m);
    expect(parseNarInfo(again, opts)).toEqual(info);
  });

  it('treats a missing Compression as bzip2 and always writes it', () => {
    const info = parseNarInfo(withLine('Compression', undefined), opts);
    expect(info.compression).toBe('bzip2');
    expect(serializeNarInfo(info)).toContain('\nCompression: bzip2\n');
  });

  it('normalizes hex, base64 and SRI hashes to sha256:<nix32>', () => {
    const sri = 'sha256-bqoTXdkwpuCtC8uMK5ICf1uV5/qFUBgdh5jLc3WSZQs=';
    const nix32 = 'sha256:02v5j9sp7jwqhwfihl45zbkranvz0a92p36b1fny19ihv5fi7akf';
    const hex = `sha256:${Buffer.from(sri.slice(7), 'base64').toString('hex')}`;
    const b64 = `sha256:${sri.slice(7)}`;
    for (const form of [sri, hex, b64, nix32]) {
      const info = parseNarInfo(
        withLine('NarHash', form).replace(/^FileHash: .*$/m, `FileHash: ${form}`),
        opts,
      );
      expect(info.narHash).toBe(nix32);
      expect(info.fileHash).toBe(nix32);
    }
  });

  it('maps Deriver unknown-deriver to none', () => {
    expect(parseNarInfo(withLine('Deriver', 'unknown-deriver'), opts).deriver).toBeUndefined();
  });

  it('keeps every Sig in order, dropping exact duplicates', () => {
    const other = `other-1:${Buffer.alloc(64, 7).toString('base64')}`;
    const mine = MID.match(/^Sig: (.*)$/m)?.[1];
    const info = parseNarInfo(`${MID}Sig: ${other}\nSig: ${mine}\n`, opts);
    expect(info.sigs).toEqual([mine, other]);
  });

  it('keeps System', () => {
    expect(parseNarInfo(withLine('System', 'x86_64-linux'), opts).system).toBe('x86_64-linux');
  });

  it('keeps an opaque URL (absolute, with a query string)', () => {
    const url = 'https://cache.example/nar/abc.nar.zst?hash=1&narsize=2';
    expect(parseNarInfo(withLine('URL', url), opts).url).toBe(url);
  });
});

describe('parseNarInfo rejects', () => {
  it.each([
    ['StorePath', withLine('StorePath', undefined), /StorePath: is missing/],
    ['URL', withLine('URL', undefined), /URL: is missing/],
    ['NarHash', withLine('NarHash', undefined), /NarHash: is missing/],
    ['NarSize', withLine('NarSize', undefined), /NarSize: is missing/],
  ])('a narinfo without %s', (field, text, message) => {
    expect(() => parseNarInfo(text, opts)).toThrow(message);
    try {
      parseNarInfo(text, opts);
    } catch (err) {
      expect(err).toBeInstanceOf(NarInfoParseError);
      expect((err as NarInfoParseError).field).toBe(field);
    }
  });

  it.each([
    ['StorePath', `/nix/store/fybihwaqfjjwcgys0kw2qxll86cn93xn-mid`],
    ['URL', 'nar/x.nar'],
    ['Compression', 'xz'],
    ['FileHash', 'sha256:0j4mhm2081lfnw9zgf6c1rsafb6c801qgh2hhvbryxg0a5wr12rk'],
    ['FileSize', '236'],
    ['NarHash', 'sha256:1j5gcjwkb88ph829gnppixgd37kqr1lqab3gfz6afcmkpxhykq5g'],
    ['NarSize', '536'],
    ['References', ''],
    ['Deriver', '04clvbkm0gq9yvqhdkw3j71lczf08mcj-mid.drv'],
    ['System', 'x86_64-linux'],
    ['CA', 'fixed:r:sha256:02v5j9sp7jwqhwfihl45zbkranvz0a92p36b1fny19ihv5fi7akf'],
  ])('a repeated %s line', (field, value) => {
    // MID has no System or CA line, so append two.
    const text = `${MID}${field}: ${value}\n${field}: ${value}\n`;
    expect(() => parseNarInfo(text, opts)).toThrow(`${field}: appears more than once`);
  });

  it.each([
    ['StorePath', 'StorePath', '/gnu/store/fybihwaqfjjwcgys0kw2qxll86cn93xn-mid'],
    ['StorePath', 'StorePath', '/nix/store/fybihwaqfjjwcgys0kw2qxll86cn93xn-mid/bin'],
    ['StorePath', 'StorePath', '/nix/store/fybihwaqfjjwcgys0kw2qxll86cn93xe-mid'],
    ['URL', 'URL', ''],
    ['Compression', 'Compression', 'rar'],
    ['FileHash', 'FileHash', 'sha256:xyz'],
    ['FileHash', 'FileHash', 'sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709'],
    ['FileSize', 'FileSize', '-1'],
    ['FileSize', 'FileSize', '1.5'],
    ['FileSize', 'FileSize', '9007199254740992'],
    ['NarHash', 'NarHash', '1j5gcjwkb88ph829gnppixgd37kqr1lqab3gfz6afcmkpxhykq5g'],
    ['NarHash', 'NarHash', 'md5:d41d8cd98f00b204e9800998ecf8427e'],
    ['NarSize', 'NarSize', '0'],
    ['NarSize', 'NarSize', 'lots'],
    ['NarSize', 'NarSize', '0x10'],
    ['NarSize', 'NarSize', ''],
    ['References', 'References', '/nix/store/yn39z09qmap99ya52fnkas1amd832dbm-leaf'],
    ['References', 'References', 'yn39z09qmap99ya52fnkas1amd832dbm-leaf ../../etc'],
    ['Deriver', 'Deriver', 'not-a-store-path.drv'],
    ['Deriver', 'Deriver', ''],
    ['Sig', 'Sig', ''],
    ['CA', 'CA', ''],
  ])('a bad %s value (%s: %j)', (field, key, value) => {
    const text = key === 'Sig' || key === 'CA' ? `${MID}${key}: ${value}\n` : withLine(key, value);
    expect(() => parseNarInfo(text, opts)).toThrow(NarInfoParseError);
    expect(() => parseNarInfo(text, opts)).toThrow(new RegExp(`^${field}: `));
  });

  it('a line without a colon', () => {
    expect(() => parseNarInfo(`${MID}garbage\n`, opts)).toThrow(/line 11/);
  });

  it('a line starting with a colon', () => {
    expect(() => parseNarInfo(`${MID}: value\n`, opts)).toThrow(NarInfoParseError);
  });

  it('an empty text or an HTML error page', () => {
    expect(() => parseNarInfo('', opts)).toThrow(/StorePath: is missing/);
    expect(() => parseNarInfo('<html><body>502 Bad Gateway</body></html>', opts)).toThrow(
      NarInfoParseError,
    );
  });
});

describe('serializeNarInfo', () => {
  const info: NarInfo = parseNarInfo(fixtureText('narinfo/top.xz.narinfo'), opts);

  it('writes keys in canonical order, System and CA included, ending with a newline', () => {
    const text = serializeNarInfo({
      ...info,
      system: 'x86_64-linux',
      ca: 'fixed:r:sha256:x',
      sigs: ['a:b', 'c:d'],
    });
    expect(text.split('\n').map((l) => l.split(':')[0])).toEqual([
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
      'Sig',
      'Sig',
      'CA',
      '',
    ]);
  });

  it('writes "References: " when there are none', () => {
    expect(serializeNarInfo({ ...info, references: [] })).toContain('\nReferences: \n');
  });

  it('refuses values that would inject a line', () => {
    expect(() => serializeNarInfo({ ...info, url: 'nar/x.nar\nSig: evil:AAAA' })).toThrow(
      NixFormatError,
    );
    expect(() => serializeNarInfo({ ...info, sigs: ['a:b\r'] })).toThrow(NixFormatError);
  });
});
