/**
 * Node.js options narwhal is launched with, everywhere it is launched: `npm start`, the `narwhal`
 * executable's shebang, the Docker image, the benchmark and the tests that run the built server
 * (`runtime-flags.spec.ts` checks that they agree).
 *
 * `--max-semi-space-size=2` caps V8's young generation at 2 × 2 MiB instead of growing it to
 * 2 × 16 MiB under load. A proxy allocates mostly short-lived request objects and I/O buffers; with a
 * small young generation they are collected within a few MiB of allocation instead of accumulating.
 * Measured with `npm run bench` (`BENCH_STORAGE=s3 BENCH_NAR_MIB=512 BENCH_CLIENTS=8
 * BENCH_COMPRESSION=none`): peak RSS during the cold fan-out 158–170 MiB with it, 209–211 MiB without
 * (`BENCH_NODE_ARGS=--max-semi-space-size=16` restores V8's default), the process before the fan-out
 * ~140 MiB instead of ~164 MiB, and throughput within run-to-run noise.
 */
export const NODE_FLAGS: readonly string[] = ['--max-semi-space-size=2'];
