import swc from 'unplugin-swc';
import { defineConfig } from 'vitest/config';

// SWC (not esbuild) compiles the sources so that NestJS gets decorator metadata.
const plugins = [swc.vite({ module: { type: 'es6' } })];

export default defineConfig({
  test: {
    projects: [
      {
        plugins,
        // Generous timeout: some specs feed decoders a byte at a time, slow on a busy 2-core machine.
        test: {
          name: 'unit',
          include: ['src/**/*.spec.ts'],
          setupFiles: ['test/support/settle-native.ts'],
          environment: 'node',
          testTimeout: 60_000,
        },
      },
      {
        // The whole application through Fastify inject, against real local HTTP upstreams.
        plugins,
        test: {
          name: 'module',
          include: ['test/module/**/*.e2e-spec.ts'],
          setupFiles: ['test/support/settle-native.ts'],
          environment: 'node',
          testTimeout: 60_000,
        },
      },
      {
        // Real services (PostgreSQL, MariaDB, Redis, an S3 server), real processes, the real Nix client.
        plugins,
        test: {
          name: 'e2e',
          include: ['test/**/*.e2e-spec.ts'],
          exclude: ['test/module/**'],
          environment: 'node',
          testTimeout: 300_000,
          hookTimeout: 600_000,
          // One file at a time: these suites start servers and measure concurrency.
          pool: 'forks',
          poolOptions: { forks: { singleFork: true } },
        },
      },
    ],
  },
});
