/**
 * Node.js options narwhal is launched with, everywhere it is launched: `npm start`, the `narwhal`
 * executable's shebang, the Docker image, the benchmark and the tests that run the built server
 * (`runtime-flags.spec.ts` checks that they agree); RUNTIME_ENV below likewise.
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

/**
 * Environment narwhal is launched with, by the same launchers.
 *
 * `MALLOC_ARENA_MAX=2`: glibc gives each thread that allocates its own malloc arena (up to 8 per
 * core), and memory freed in one is not reused by another. narwhal's native work runs on several
 * threads (libuv's pool decoding xz, the verifier threads, SQLite), so arenas multiplied the peak.
 * Measured on the development machine (a cold `nix copy` of the bench closure, then two warm ones,
 * two runs each): peak RSS 200–225 MiB without it, 165–183 MiB with it; the copies took as long.
 */
export const RUNTIME_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '2' };

/** RUNTIME_ENV as the `NAME=value` words a shell command or `env -S` takes. */
export const RUNTIME_ENV_WORDS: readonly string[] = Object.entries(RUNTIME_ENV).map(
  ([k, v]) => `${k}=${v}`,
);
