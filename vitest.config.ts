import { defineConfig } from 'vitest/config';

// Tests use real sockets, real servers and network namespaces: generous timeouts,
// and files run in separate forked processes so one file's servers never leak into another's.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
