import { afterAll } from 'vitest';
import { asyncXzIdle } from '../../src/nix/decompress';

// Every test file of the unit and module projects: before the worker process may end, let xz slices
// still decoding on lzma-native's threads finish (a decoder destroyed mid-way leaves its current
// slice running; lzma-native aborts the process if it exits meanwhile).
afterAll(() => asyncXzIdle());
