// The compressor half of lzma-native, used by the test fixtures to make xz NARs
// (src/nix/lzma-native.d.ts declares only the decoder narwhal uses; these declarations merge).
declare module 'lzma-native' {
  /** Compresses a whole buffer to .xz. */
  export function compress(
    input: Buffer,
    options?: { preset?: number; threads?: number },
  ): Promise<Buffer>;
}
