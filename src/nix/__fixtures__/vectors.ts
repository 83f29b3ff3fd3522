/**
 * Vectors produced by the real Nix 2.8 CLI on this project's dev machine; see README.md for the
 * commands. Do not edit by hand: regenerate with those commands instead.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const STORE_DIR = '/nix/store';

/** Reads a fixture file (relative to this folder) as bytes. */
export function fixtureBytes(relative: string): Buffer {
  return readFileSync(join(__dirname, relative));
}

/** Reads a fixture file (relative to this folder) as UTF-8 text. */
export function fixtureText(relative: string): string {
  return fixtureBytes(relative).toString('utf8');
}

export interface HashVector {
  algo: 'md5' | 'sha1' | 'sha256' | 'sha512';
  /** What was hashed (printf '%s' input | <algo>sum), for the record. */
  input: string;
  hex: string;
  /** `nix-hash --type <algo> --to-base32 <hex>` */
  nix32: string;
  /** `nix hash to-base64 --type <algo> <hex>` */
  base64: string;
}

export const HASH_VECTORS: readonly HashVector[] = [
  {
    algo: 'md5',
    input: '',
    hex: 'd41d8cd98f00b204e9800998ecf8427e',
    nix32: '3y8bwfr609h3lh9ch0izcqq7fl',
    base64: '1B2M2Y8AsgTpgAmY7PhCfg==',
  },
  {
    algo: 'md5',
    input: 'narwhal',
    hex: '1b551a09c4b040546b0f2c54fa7b70b9',
    nix32: '5rf1xzlm1c1xmm8h5hqh4ilm8v',
    base64: 'G1UaCcSwQFRrDyxU+ntwuQ==',
  },
  {
    algo: 'sha1',
    input: '',
    hex: 'da39a3ee5e6b4b0d3255bfef95601890afd80709',
    nix32: '143xibwh31h9bvxzalr0sjvbbvpa6ffs',
    base64: '2jmj7l5rSw0yVb/vlWAYkK/YBwk=',
  },
  {
    algo: 'sha1',
    input: 'abc',
    hex: 'a9993e364706816aba3e25717850c26c9cd0d89d',
    nix32: 'kpcd173cq987hw957sx6m0868wv3x6d9',
    base64: 'qZk+NkcGgWq6PiVxeFDCbJzQ2J0=',
  },
  {
    algo: 'sha256',
    input: '',
    hex: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
    nix32: '0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73',
    base64: '47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=',
  },
  {
    algo: 'sha256',
    input: 'abc',
    hex: 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
    nix32: '1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s',
    base64: 'ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=',
  },
  {
    algo: 'sha256',
    input: 'narwhal',
    hex: 'd6e494d265e4d2405eeebfd2a86f7698c9c0eb9c2388f90c6f8fefe2540e0299',
    nix32: '16821raf5vwgdw6gk213kkmw1jcqfrpsilmzxrg41lp4cp999r6n',
    base64: '1uSU0mXk0kBe7r/SqG92mMnA65wjiPkMb4/v4lQOApk=',
  },
  {
    algo: 'sha256',
    input: '(32 zero bytes)',
    hex: '00'.repeat(32),
    nix32: '0'.repeat(52),
    base64: 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=',
  },
  {
    algo: 'sha256',
    input: '(32 0xff bytes)',
    hex: 'ff'.repeat(32),
    nix32: `1${'z'.repeat(51)}`,
    base64: '//////////////////////////////////////////8=',
  },
  {
    algo: 'sha256',
    input: '(0x01 then 31 zero bytes)',
    hex: `01${'00'.repeat(31)}`,
    nix32: `${'0'.repeat(51)}1`,
    base64: 'AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=',
  },
  {
    algo: 'sha256',
    input: '(31 zero bytes then 0x01)',
    hex: `${'00'.repeat(31)}01`,
    nix32: `008${'0'.repeat(49)}`,
    base64: 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE=',
  },
  {
    algo: 'sha512',
    input: 'abc',
    hex: 'ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f',
    nix32:
      '2gs8k559z4rlahfx0y688s49m2vvszylcikrfinm30ly9rak69236nkam5ydvly1ai7xac99vxfc4ii84hawjbk876blyk1jfhkbbyx',
    base64:
      '3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw==',
  },
];

/** Store path hash parts (20 bytes) and their bytes: `nix hash to-base16 --type sha1 <part>`. */
export const STORE_PATH_HASH_VECTORS: readonly { nix32: string; hex: string }[] = [
  { nix32: 'yn39z09qmap99ya52fnkas1amd832dbm', hex: '75353150ab2a6835ad1345f994aeaa38819f86f5' },
  { nix32: 'fybihwaqfjjwcgys0kw2qxll86cn93xn', hex: 'b68f64994194762cf804da3fc6a5745871189777' },
  { nix32: '04clvbkm0gq9yvqhdkw3j71lczf08mcj', hex: '925504dc67341c39f86c106f9ff00375ae4d1901' },
];

/** Texts Nix 2.8 rejects as nix32 (`nix hash to-base16 --type <algo> <text>` fails). */
export const NIX_REJECTED_NIX32: readonly { algo: 'md5' | 'sha256'; text: string }[] = [
  { algo: 'sha256', text: `2${'z'.repeat(51)}` }, // bits beyond 32 bytes
  { algo: 'sha256', text: `1${'z'.repeat(50)}e` }, // 'e' is not in the alphabet
  { algo: 'md5', text: `8${'z'.repeat(25)}` }, // bits beyond 16 bytes ('7zzz…' is accepted)
];

/** `nix path-info --json` of the content-addressed mid (SRI) and its narinfo NarHash (nix32). */
export const SRI_VECTOR = {
  sri: 'sha256-bqoTXdkwpuCtC8uMK5ICf1uV5/qFUBgdh5jLc3WSZQs=',
  nix32: 'sha256:02v5j9sp7jwqhwfihl45zbkranvz0a92p36b1fny19ihv5fi7akf',
};

/**
 * Throwaway key pair made for these fixtures by `nix-store --generate-binary-cache-key test-1 sk pk`.
 * It signs nothing but fixtures; never trust it anywhere.
 */
export const NIX_TEST_KEY = {
  secret:
    'test-1:lFBKxpJve0v2ekui0MouPOxvUCa37N8sRQX8qxLJMOF3z6kW6mlxYMWMbWsXvzvoVmv4XAu9p+Lg+GWxm4WtQw==',
  public: 'test-1:d8+pFuppcWDFjG1rF7876FZr+FwLvafi4PhlsZuFrUM=',
};

/**
 * Narinfo fixtures whose paths were signed with NIX_TEST_KEY (`nix store sign`) before `nix copy`;
 * each has exactly one `Sig:` line, the one Nix wrote. top has three references, one of them itself.
 */
export const SIGNED_NARINFOS: readonly string[] = [
  'narinfo/leaf.xz.narinfo',
  'narinfo/mid.xz.narinfo',
  'narinfo/mid.zstd.narinfo',
  'narinfo/top.xz.narinfo',
  'narinfo/seq.xz.narinfo',
];

/** The `Sig:` value of a fixture, read with a plain regex (independent of parseNarInfo). */
export function rawSig(text: string): string {
  const match = /^Sig: (.*)$/m.exec(text);
  if (match === null) throw new Error('fixture has no Sig line');
  return match[1];
}

/**
 * NARs as Nix 2.8 wrote them with `nix copy --to file://…?compression=<c>`, with the narinfo Nix
 * wrote beside each (its FileHash, FileSize, NarHash and NarSize describe the file).
 */
export const NIX_NARS: readonly { nar: string; narinfo: string }[] = [
  { nar: 'nar/seq.nar.xz', narinfo: 'narinfo/seq.xz.narinfo' },
  { nar: 'nar/seq.nar.zst', narinfo: 'narinfo/seq.zstd.narinfo' },
  { nar: 'nar/seq.nar.br', narinfo: 'narinfo/seq.br.narinfo' },
  { nar: 'nar/seq.nar.gz', narinfo: 'narinfo/seq.gzip.narinfo' },
];

/** What cli/seq.txt.* decompress to: the output of `seq 1 10000`. */
export function seqText(): string {
  let text = '';
  for (let i = 1; i <= 10000; i++) text += `${i}\n`;
  return text;
}
