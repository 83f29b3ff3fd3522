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

/**
 * Environment variables narwhal is launched with, by the same launchers as NODE_FLAGS (the shebang
 * sets them through `env -S`, the Docker image with `ENV`).
 *
 * `MALLOC_ARENA_MAX=2` caps glibc's malloc at two arenas. By default every thread that allocates
 * (the event loop, libuv's thread pool, V8's helper threads, the verifier thread) may get an arena of
 * its own, up to eight per core, and memory freed in one arena is kept there for that arena's
 * threads. Measured with `npm run bench:compare` on the 2-core development machine, alternating
 * runs with and without it: all measures in one process (three pairs), peak RSS 181–217 MiB against
 * 228–239 MiB; the cold herd alone (nine and six runs), 171–189 against 182–202 MiB. Request rates,
 * the herd's wall time and one cold client's time stayed within the runs' noise. Ignored where the C
 * library is not glibc (musl).
 */
export const RUNTIME_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '2' };
