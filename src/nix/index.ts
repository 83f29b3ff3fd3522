export * from './errors';
export * from './base32';
export * from './hash';
export * from './store-path';
export * from './compression';
export * from './narinfo';
export * from './fingerprint';
export * from './decompress';
